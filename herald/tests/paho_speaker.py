"""A cloud speaker played by the Eclipse paho-mqtt client (v2), for real_clients.rs
and downlink.rs: connects with device credentials and a persistent session,
subscribes to its downlink namespace with QoS 1, and prints every command it
receives as one hex line on stdout (paho sends the PUBACK after on_message).
Exits after --count messages or --timeout seconds.
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    received = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.device, clean_session=False,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(args.device, args.password)

    def on_connect(c, userdata, flags, reason, properties):
        c.subscribe(f"devices/{args.device}/down/#", qos=1)

    def on_subscribe(c, userdata, mid, reasons, properties):
        print("SUBSCRIBED", flush=True)

    def on_message(c, userdata, message):
        received.append(message.payload)
        print(message.payload.hex(), flush=True)
        if len(received) >= args.count:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    ok = done.wait(args.timeout)
    # Give paho a moment to send the last PUBACK before disconnecting.
    threading.Event().wait(0.5)
    client.disconnect()
    client.loop_stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
