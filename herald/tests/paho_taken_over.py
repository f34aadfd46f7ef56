"""An MQTT 5 terminal (Eclipse paho-mqtt v2) that connects and waits to be
disconnected by the server: prints CONNECTED once connected, then the
DISCONNECT reason code it got (e.g. 142, Session taken over), and exits.
Used by cluster.rs for the takeover across nodes.
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--device", required=True)
parser.add_argument("--password", required=True)
parser.add_argument("--timeout", type=float, default=60)
args = parser.parse_args()

connected = threading.Event()
disconnected = threading.Event()
result = {}

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.device, protocol=mqtt.MQTTv5)
client.username_pw_set(args.device, args.password)


def on_connect(c, userdata, flags, reason, properties):
    if not reason.is_failure:
        connected.set()


def on_disconnect(c, userdata, flags, reason, properties):
    result["reason"] = reason.value
    disconnected.set()


client.on_connect = on_connect
client.on_disconnect = on_disconnect
client.connect("127.0.0.1", args.port, keepalive=60)
client.loop_start()
if not connected.wait(args.timeout):
    print("NOT CONNECTED", flush=True)
    sys.exit(1)
print("CONNECTED", flush=True)
if not disconnected.wait(args.timeout):
    print("STILL CONNECTED", flush=True)
    sys.exit(1)
print(f"DISCONNECTED {result['reason']}", flush=True)
client.loop_stop()
