"""Checks Herald's MQTT-over-WebSocket listener with the Eclipse paho-mqtt client (v2).

Used by websocket.rs against a broker in open mode. For MQTT 3.1.1 and 5, over
ws or (with --tls) wss: a subscriber and a publisher connect with paho's
"websockets" transport, the publisher sends a small and a 100 KiB QoS 1
message, and the subscriber must receive both, intact, at QoS 1. paho offers
the "mqtt" subprotocol [MQTT-6.0.0-4] and sends each packet in a binary frame
[MQTT-6.0.0-1]. With --expect-refused the path is wrong: the WebSocket
handshake must fail (the broker answers 404) and no CONNACK may come.
Exits non-zero on the first failure.
"""
import argparse
import os
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

WAIT = 10


def make_client(args, client_id, version):
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=version,
        transport="websockets",
    )
    client.ws_set_options(path=args.path)
    if args.tls:
        client.tls_set(ca_certs=args.cafile)
    return client


def connect(client, args):
    connected = threading.Event()
    result = {}

    def on_connect(c, userdata, flags, reason, properties):
        result["reason"] = reason
        connected.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    assert connected.wait(WAIT), "no CONNACK over WebSocket"
    assert not result["reason"].is_failure, f"connect refused: {result['reason']}"


def check(version, args):
    name = "5" if version == mqtt.MQTTv5 else "3.1.1"
    scheme = "wss" if args.tls else "ws"
    tag = f"{scheme}-{name.replace('.', '')}-{os.getpid()}"
    topic = f"ws-test/{tag}/readings"
    small = b"over a websocket"
    # 100 KiB: one frame from paho; Herald sends it back in several messages
    # of at most 16 KiB, which paho reassembles [MQTT-6.0.0-2].
    large = bytes(range(256)) * 400
    received = []
    all_in = threading.Event()
    subscribed = threading.Event()

    subscriber = make_client(args, f"sub-{tag}", version)

    def on_subscribe(c, userdata, mid, reasons, properties):
        subscribed.granted = reasons[0]
        subscribed.set()

    def on_message(c, userdata, message):
        received.append(message)
        if len(received) == 2:
            all_in.set()

    subscriber.on_subscribe = on_subscribe
    subscriber.on_message = on_message
    publisher = make_client(args, f"pub-{tag}", version)
    try:
        connect(subscriber, args)
        subscriber.subscribe(topic, qos=1)
        assert subscribed.wait(WAIT), "no SUBACK"
        assert not subscribed.granted.is_failure, f"subscription refused: {subscribed.granted}"

        connect(publisher, args)
        properties = None
        if version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = ("via", scheme)
        for payload in (small, large):
            info = publisher.publish(topic, payload, qos=1, properties=properties)
            info.wait_for_publish(timeout=WAIT)
            assert info.is_published(), "no PUBACK over WebSocket"

        assert all_in.wait(WAIT), f"subscriber got {len(received)} of 2 messages"
        assert [m.payload for m in received] == [small, large], "payloads changed on the way"
        assert all(m.qos == 1 for m in received), [m.qos for m in received]
        assert all(m.topic == topic for m in received)
        if version == mqtt.MQTTv5:
            props = received[0].properties
            assert ("via", scheme) in getattr(props, "UserProperty", []), props
        print(f"paho websocket {scheme} MQTT {name}: ok")
    finally:
        for client in (publisher, subscriber):
            client.disconnect()
            client.loop_stop()


def check_refused(args):
    client = make_client(args, f"wrong-path-{os.getpid()}", mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    try:
        client.connect("127.0.0.1", args.port, keepalive=30)
    except (mqtt.WebsocketConnectionError, OSError) as error:
        print(f"paho websocket wrong path {args.path}: refused ({error})")
        return
    client.loop_start()
    try:
        assert not connected.wait(3), f"CONNACK on wrong path {args.path}"
    finally:
        client.loop_stop()
    print(f"paho websocket wrong path {args.path}: no connection")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mqtt")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--cafile")
    parser.add_argument("--expect-refused", action="store_true")
    args = parser.parse_args()
    if args.expect_refused:
        check_refused(args)
        return 0
    for version in (mqtt.MQTTv311, mqtt.MQTTv5):
        check(version, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
