"""A device played by the Eclipse paho-mqtt client (v2) in MQTT 5 (or 3.1.1)
mode, for mqtt5_properties.rs: MQTT 5 properties in both directions.

Connects with device credentials; with --subscribe, subscribes to the
device's downlink namespace at QoS 1 and prints SUBSCRIBED; with --publish,
publishes one QoS 1 uplink carrying the given MQTT 5 properties (user
properties in the order given, Content Type, Response Topic, Correlation
Data) and prints PUBACK <reason code>; then prints each message it receives
as one tab-separated line, until --count messages or --timeout seconds:

    MESSAGE <topic> <payload hex> <user properties>

where <user properties> is `-` when the PUBLISH had no properties at all
(MQTT 3.1.1), else `hex(name):hex(value)` pairs joined by commas, in the
order received (empty when there were properties but no user property).
Exits non-zero on a refusal or a timeout.
"""
import argparse
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def user_properties(message):
    if message.properties is None:
        return "-"
    pairs = getattr(message.properties, "UserProperty", None) or []
    return ",".join(f"{k.encode().hex()}:{v.encode().hex()}" for k, v in pairs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--protocol", choices=["5", "311"], default="5")
    parser.add_argument("--subscribe", action="store_true")
    parser.add_argument("--publish", metavar="TOPIC")
    parser.add_argument("--payload", default="")
    parser.add_argument("--user-property", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--content-type")
    parser.add_argument("--response-topic")
    parser.add_argument("--correlation-hex")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    v5 = args.protocol == "5"
    events = {"connack": threading.Event(), "suback": threading.Event(), "done": threading.Event()}
    result = {}
    received = []
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.device, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.device, clean_session=True,
                             protocol=mqtt.MQTTv311)
    client.username_pw_set(args.device, args.password)

    def on_connect(c, userdata, flags, reason, properties):
        result["connect"] = reason
        events["connack"].set()

    def on_subscribe(c, userdata, mid, reasons, properties):
        result["suback"] = reasons
        events["suback"].set()

    def on_publish(c, userdata, mid, reason, properties):
        result["puback"] = reason

    def on_message(c, userdata, message):
        received.append(message)
        print(f"MESSAGE\t{message.topic}\t{message.payload.hex()}\t{user_properties(message)}", flush=True)
        if len(received) >= args.count:
            events["done"].set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    try:
        if not events["connack"].wait(10):
            print("no CONNACK", file=sys.stderr)
            return 1
        if result["connect"].is_failure:
            print(f"connect refused: {result['connect']}", file=sys.stderr)
            return 1
        if args.subscribe:
            client.subscribe(f"devices/{args.device}/down/#", qos=1)
            if not events["suback"].wait(10) or result["suback"][0].is_failure:
                print(f"subscription refused: {result.get('suback')}", file=sys.stderr)
                return 1
            print("SUBSCRIBED", flush=True)
        if args.publish:
            properties = None
            if v5:
                properties = Properties(PacketTypes.PUBLISH)
                if args.user_property:
                    properties.UserProperty = [tuple(p.split("=", 1)) for p in args.user_property]
                if args.content_type is not None:
                    properties.ContentType = args.content_type
                if args.response_topic is not None:
                    properties.ResponseTopic = args.response_topic
                if args.correlation_hex is not None:
                    properties.CorrelationData = bytes.fromhex(args.correlation_hex)
            info = client.publish(args.publish, args.payload.encode(), qos=1, properties=properties)
            info.wait_for_publish(timeout=30)
            if not info.is_published():
                print("no PUBACK", file=sys.stderr)
                return 1
            reason = result.get("puback")
            print(f"PUBACK {reason.value if reason is not None else 0}", flush=True)
            if reason is not None and reason.is_failure:
                return 1
        if args.count > 0 and not events["done"].wait(args.timeout):
            print(f"received {len(received)} of {args.count} messages", file=sys.stderr)
            return 1
        # Give paho a moment to send the last PUBACK before disconnecting.
        threading.Event().wait(0.5)
        return 0
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
