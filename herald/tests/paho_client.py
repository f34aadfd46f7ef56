"""Checks Herald with the Eclipse paho-mqtt client (v2), MQTT 3.1.1 and 5.

Used by real_clients.rs. For each protocol version: connect with device
credentials, publish a QoS 1 scan uplink and wait for its PUBACK, check that a
publish outside the namespace is refused, and subscribe to the device's own
downlink namespace. Exits non-zero on the first failure.
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.packettypes import PacketTypes


def check(version, args):
    done = {"connack": threading.Event(), "suback": threading.Event(), "disconnected": threading.Event()}
    result = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.device, protocol=version)
    client.username_pw_set(args.device, args.password)

    def on_connect(c, userdata, flags, reason, properties):
        result["connect"] = reason
        done["connack"].set()

    def on_subscribe(c, userdata, mid, reasons, properties):
        result["suback"] = reasons
        done["suback"].set()

    def on_disconnect(c, userdata, flags, reason, properties):
        done["disconnected"].set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    try:
        assert done["connack"].wait(10), "no CONNACK"
        assert not result["connect"].is_failure, f"connect refused: {result['connect']}"

        info = client.publish(f"devices/{args.device}/up/scan", b"paho scan", qos=1)
        info.wait_for_publish(timeout=30)
        assert info.is_published(), "no PUBACK for the uplink"

        client.subscribe(f"devices/{args.device}/down/#", qos=1)
        assert done["suback"].wait(10), "no SUBACK"
        granted = result["suback"][0]
        assert not granted.is_failure, f"own downlink namespace refused: {granted}"

        if version == mqtt.MQTTv5:
            done["suback"].clear()
            client.subscribe("devices/someone-else/down/#", qos=1)
            assert done["suback"].wait(10), "no SUBACK"
            refused = result["suback"][0]
            assert refused.is_failure and refused.value == 0x87, f"expected not authorized, got {refused}"
        print(f"paho {version}: ok")
    finally:
        client.disconnect()
        client.loop_stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()
    for version in (mqtt.MQTTv311, mqtt.MQTTv5):
        check(version, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
