#!/usr/bin/env python3
"""MQTT 5 conformance checks against Herald with paho-mqtt 2.x, a client
nobody here wrote. broker/tests/mqtt5.rs runs one case per test:

    python3 paho_mqtt5.py <case> <port> [username password]

Each case names the normative statements of the MQTT 5.0 specification it
checks, exits 0 when Herald behaves as they require, and otherwise fails
with an assertion that says what it saw.
"""

import queue
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

WAIT = 5.0
QUIET = 1.0
HOST = "127.0.0.1"


def props(packet_type, **values):
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


class Client:
    """A paho client driven synchronously: every callback lands in a queue."""

    def __init__(self, port, client_id=None, clean_start=True, expiry=None,
                 connect_props=None, will=None, manual_ack=False, keepalive=60,
                 login=None):
        self.client_id = client_id or "paho-" + uuid.uuid4().hex[:8]
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, p: self.connacks.put((flags, rc, p))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.c.on_disconnect = lambda c, u, flags, rc, p: self.disconnects.put(rc)
        if login:
            self.c.username_pw_set(*login)
        if will:
            self.c.will_set(**will)
        connect = Properties(PacketTypes.CONNECT)
        if expiry is not None:
            connect.SessionExpiryInterval = expiry
        for name, value in (connect_props or {}).items():
            setattr(connect, name, value)
        self.c.connect(HOST, port, keepalive, clean_start=clean_start, properties=connect)
        self.c.loop_start()
        self.flags, self.reason, self.connack = self.connacks.get(timeout=WAIT)
        assert not self.reason.is_failure, f"CONNACK {self.reason}"

    @property
    def session_present(self):
        return self.flags.session_present

    def subscribe(self, topic, qos=1, properties=None, **options):
        self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **options),
                         properties=properties)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            info.wait_for_publish(WAIT)
            assert info.is_published(), f"no acknowledgement for {topic}"
        return info

    def receive(self, timeout=WAIT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout} s") from None

    def nothing(self, timeout=QUIET):
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message on {m.topic!r}: {m.payload!r}")

    def close(self, properties=None, reason=None):
        if reason is not None:
            self.c.disconnect(reasoncode=reason, properties=properties)
        else:
            self.c.disconnect(properties=properties)
        time.sleep(0.2)
        self.c.loop_stop()

    def drop(self):
        """Goes away without DISCONNECT, as a terminal losing power does."""
        self.c.loop_stop()
        self.c.socket().close()


def received_qos(client, count):
    got = {}
    for _ in range(count):
        m = client.receive()
        got[m.topic] = m.qos
    return got


# --- QoS ------------------------------------------------------------------------------------

def qos_downgrade(port):
    """[MQTT-3.8.4-8]: delivered at the minimum of the message's QoS and the
    subscription's granted QoS, on every path: retained, live, and queued for
    an offline session and delivered when it resumes."""
    publisher = Client(port)
    for qos in (0, 1, 2):
        publisher.publish(f"qd/retained/{qos}", b"r", qos=qos, retain=True)
    sub = Client(port, client_id="qd-sub", clean_start=True, expiry=300)
    assert sub.subscribe("qd/retained/+", qos=2)[0].value == 2
    got = received_qos(sub, 3)
    assert got == {"qd/retained/0": 0, "qd/retained/1": 1, "qd/retained/2": 2}, f"retained {got}"
    sub.subscribe("qd/live/#", qos=2)
    for qos in (0, 1, 2):
        publisher.publish(f"qd/live/{qos}", b"l", qos=qos)
    got = received_qos(sub, 3)
    assert got == {"qd/live/0": 0, "qd/live/1": 1, "qd/live/2": 2}, f"live {got}"
    sub.subscribe("qd/low/#", qos=1)
    publisher.publish("qd/low/2", b"l", qos=2)
    got = received_qos(sub, 1)
    assert got == {"qd/low/2": 1}, f"granted QoS 1, message QoS 2: {got}"
    sub.close()
    for qos in (1, 2):
        publisher.publish(f"qd/live/queued{qos}", b"q", qos=qos)
    sub = Client(port, client_id="qd-sub", clean_start=False, expiry=300)
    assert sub.session_present
    got = received_qos(sub, 2)
    assert got == {"qd/live/queued1": 1, "qd/live/queued2": 2}, f"resumed session {got}"
    sub.close()
    publisher.close()


# --- Message expiry --------------------------------------------------------------------------

def message_expiry(port):
    """[MQTT-3.3.2-5]: a message whose expiry passed while queued is not
    delivered; [MQTT-3.3.2-6]: the one delivered carries its expiry minus
    the time it waited. Both for an offline session's queue and for retained
    messages."""
    sub = Client(port, client_id="me-sub", expiry=300)
    sub.subscribe("me/queued", qos=1)
    sub.close()
    publisher = Client(port)
    short = props(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    long = props(PacketTypes.PUBLISH, MessageExpiryInterval=60)
    publisher.publish("me/queued", b"stale", qos=1, properties=short)
    publisher.publish("me/queued", b"fresh", qos=1, properties=long)
    publisher.publish("me/retained/stale", b"stale", qos=1, retain=True, properties=short)
    publisher.publish("me/retained/fresh", b"fresh", qos=1, retain=True, properties=long)
    time.sleep(2.5)
    sub = Client(port, client_id="me-sub", clean_start=False, expiry=300)
    m = sub.receive()
    assert m.payload == b"fresh", f"expired queued message delivered: {m.payload!r}"
    left = m.properties.MessageExpiryInterval
    assert 50 <= left <= 58, f"queued message: remaining expiry {left}, sent 60, waited 2.5 s"
    sub.nothing()
    sub.subscribe("me/retained/+", qos=1)
    m = sub.receive()
    assert (m.topic, m.payload, m.retain) == ("me/retained/fresh", b"fresh", True), m.topic
    left = m.properties.MessageExpiryInterval
    assert 50 <= left <= 58, f"retained message: remaining expiry {left}"
    sub.nothing()
    sub.close()
    publisher.close()


# --- Session expiry --------------------------------------------------------------------------

def session_expiry(port):
    """[MQTT-3.1.2-23]: the session is kept only for its Session Expiry
    Interval after the connection closes; after that Session Present is 0
    [MQTT-3.2.2-2]. §3.14.2.2.2: an expiry sent with DISCONNECT replaces the
    one of CONNECT."""
    c = Client(port, client_id="se-1", expiry=1)
    c.subscribe("se/t")
    c.close()
    c = Client(port, client_id="se-1", clean_start=False, expiry=1)
    assert c.session_present, "resumed within its expiry"
    c.close()
    time.sleep(2.5)
    c = Client(port, client_id="se-1", clean_start=False, expiry=60)
    assert not c.session_present, "session present after its expiry had passed"
    # Set to 0 at DISCONNECT: the session ends with the connection.
    c.close(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    c = Client(port, client_id="se-1", clean_start=False, expiry=60)
    assert not c.session_present, "DISCONNECT with Session Expiry 0 kept the session"
    # Lengthened at DISCONNECT (from 1 s to 60 s): still there after 2.5 s.
    c.close()
    c = Client(port, client_id="se-2", expiry=1)
    c.close(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=60))
    time.sleep(2.5)
    c = Client(port, client_id="se-2", clean_start=False, expiry=60)
    assert c.session_present, "DISCONNECT's longer expiry was not kept"
    c.close()


# --- Will ------------------------------------------------------------------------------------

def will_properties(port):
    """§3.1.3.2: the will's properties are sent with it when it is published:
    user properties in order [MQTT-3.3.2-17], [MQTT-3.3.2-18], Content Type
    [MQTT-3.3.2-20], Response Topic [MQTT-3.3.2-15], Correlation Data
    [MQTT-3.3.2-16], Payload Format Indicator [MQTT-3.3.2-4]."""
    sub = Client(port)
    sub.subscribe("will/speaker-1", qos=1)
    will = props(PacketTypes.WILLMESSAGE,
                 ContentType="application/json",
                 ResponseTopic="will/replies",
                 CorrelationData=b"\x00\x01corr",
                 PayloadFormatIndicator=1,
                 MessageExpiryInterval=120)
    will.UserProperty = ("reason", "power-lost")
    will.UserProperty = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    will.UserProperty = ("reason", "second")
    dying = Client(port, will=dict(topic="will/speaker-1", payload=b'{"offline":true}', qos=1,
                                   properties=will))
    dying.drop()
    m = sub.receive()
    p = m.properties
    assert m.payload == b'{"offline":true}'
    assert p.UserProperty == [("reason", "power-lost"),
                              ("traceparent",
                               "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                              ("reason", "second")], p.UserProperty
    assert p.ContentType == "application/json", p
    assert p.ResponseTopic == "will/replies", p
    assert p.CorrelationData == b"\x00\x01corr", p
    assert p.PayloadFormatIndicator == 1, p
    assert 100 <= p.MessageExpiryInterval <= 120, p
    sub.close()


# --- Subscription identifiers ----------------------------------------------------------------

def subscription_identifiers(port):
    """[MQTT-3.3.4-3]: a message matching several subscriptions of one
    session carries all their Subscription Identifiers; [MQTT-3.3.4-4]: a
    subscription without one adds none. Retained messages sent on subscribe
    carry that subscription's identifier."""
    publisher = Client(port)
    publisher.publish("sid/retained", b"r", qos=1, retain=True)
    sub = Client(port)
    sub.subscribe("sid/+", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    m = sub.receive()
    assert m.topic == "sid/retained" and m.properties.SubscriptionIdentifier == [7], m.properties
    sub.subscribe("sid/#", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=300))
    sub.receive()  # the retained message again, for the new subscription
    sub.subscribe("sid/plain", qos=1)
    publisher.publish("sid/plain", b"x", qos=1)
    m = sub.receive()
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 300], m.properties
    sub.nothing()
    sub.close()
    publisher.close()


# --- Topic aliases ---------------------------------------------------------------------------

def topic_alias_from_client(port):
    """[MQTT-3.2.2-17]: CONNACK sends the Topic Alias Maximum; a client sets
    an alias with a topic and then uses it with an empty topic (§3.3.2.3.4);
    an alias above the maximum closes the connection with 0x94
    [MQTT-3.3.2-9], [MQTT-4.13.2-1]."""
    sub = Client(port)
    sub.subscribe("ta/in/#", qos=1)
    c = Client(port)
    maximum = c.connack.TopicAliasMaximum
    assert maximum == 10, f"Topic Alias Maximum {maximum}"
    c.publish("ta/in/scan", b"1", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    c.publish("", b"2", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    for expected in (b"1", b"2"):
        m = sub.receive()
        assert (m.topic, m.payload) == ("ta/in/scan", expected), (m.topic, m.payload)
        assert m.properties is None or not hasattr(m.properties, "TopicAlias") \
            or getattr(m.properties, "TopicAlias", None) is None, "the client's alias was forwarded"
    c.c.publish("ta/in/scan", b"3", qos=1,
                properties=props(PacketTypes.PUBLISH, TopicAlias=maximum + 1))
    rc = c.disconnects.get(timeout=WAIT)
    assert rc.value == 0x94, f"disconnected with {rc} ({rc.value:#x}), expected 0x94"
    c.c.loop_stop()
    sub.nothing()
    sub.close()


def topic_alias_to_client(port):
    """§3.3.2.3.4: a client that allows topic aliases (Topic Alias Maximum in
    CONNECT) gets the topic once with an alias, then the alias alone; never
    an alias above its maximum [MQTT-3.3.2-10]."""
    sub = Client(port, connect_props={"TopicAliasMaximum": 1})
    sub.subscribe("ta/out/#", qos=1)
    publisher = Client(port)
    for i in range(3):
        publisher.publish("ta/out/announce", str(i).encode(), qos=1)
    publisher.publish("ta/out/other", b"o", qos=1)
    first = sub.receive()
    assert first.topic == "ta/out/announce" and first.properties.TopicAlias == 1, first.properties
    for _ in range(2):
        m = sub.receive()
        assert m.topic == "" and m.properties.TopicAlias == 1, (m.topic, m.properties)
    other = sub.receive()
    assert other.topic == "ta/out/other", other.topic
    assert getattr(other.properties, "TopicAlias", None) is None, "alias above the client's maximum"
    sub.close()
    publisher.close()


# --- Keep alive, flow control, packet size ---------------------------------------------------

def server_keep_alive(port):
    """[MQTT-3.2.2-21]: a server that does not accept the client's Keep Alive
    sends Server Keep Alive in CONNACK, and [MQTT-3.1.2-21] the client uses it.
    Herald runs here with max_keepalive_secs = 30."""
    c = Client(port, keepalive=120)
    assert c.connack.ServerKeepAlive == 30, f"Server Keep Alive {c.connack}"
    c.close()
    c = Client(port, keepalive=20)
    assert getattr(c.connack, "ServerKeepAlive", None) is None, "sent though 20 s is accepted"
    c.close()


def receive_maximum(port):
    """[MQTT-3.3.4-9]: the server sends no more unacknowledged QoS 1/2
    PUBLISHes than the client's Receive Maximum."""
    sub = Client(port, connect_props={"ReceiveMaximum": 2}, manual_ack=True)
    sub.subscribe("rm/t", qos=1)
    publisher = Client(port)
    for i in range(6):
        publisher.publish("rm/t", str(i).encode(), qos=1)
    held = [sub.receive(), sub.receive()]
    sub.nothing()  # two unacknowledged: nothing more comes
    got = [m.payload for m in held]
    for m in held:
        sub.c.ack(m.mid, m.qos)
    for _ in range(4):
        m = sub.receive()
        got.append(m.payload)
        sub.c.ack(m.mid, m.qos)
    assert got == [str(i).encode() for i in range(6)], got
    sub.close()
    publisher.close()


def maximum_packet_size(port):
    """[MQTT-3.1.2-24]: the server sends no packet larger than the client's
    Maximum Packet Size; [MQTT-3.1.2-25]: it drops such a message instead."""
    sub = Client(port, connect_props={"MaximumPacketSize": 256})
    sub.subscribe("mps/t", qos=1)
    publisher = Client(port)
    publisher.publish("mps/t", b"x" * 1000, qos=1)
    publisher.publish("mps/t", b"small", qos=1)
    m = sub.receive()
    assert m.payload == b"small", f"got {len(m.payload)} bytes"
    sub.nothing()
    sub.close()
    publisher.close()


# --- Subscription options --------------------------------------------------------------------

def no_local(port):
    """[MQTT-3.8.3-3]: with No Local, a client's own messages are not sent
    back to it; other publishers' are."""
    c = Client(port)
    c.subscribe("nl/t", qos=1, noLocal=True)
    c.publish("nl/t", b"mine", qos=1)
    c.nothing()
    other = Client(port)
    other.publish("nl/t", b"theirs", qos=1)
    assert c.receive().payload == b"theirs"
    c.close()
    other.close()


def retain_as_published(port):
    """[MQTT-3.3.1-12]: without Retain As Published, forwarded messages have
    RETAIN 0; [MQTT-3.3.1-13]: with it, RETAIN as published."""
    keep = Client(port)
    keep.subscribe("rap/t", qos=1, retainAsPublished=True)
    clear = Client(port)
    clear.subscribe("rap/t", qos=1, retainAsPublished=False)
    publisher = Client(port)
    publisher.publish("rap/t", b"r", qos=1, retain=True)
    assert keep.receive().retain is True
    assert clear.receive().retain is False
    publisher.publish("rap/t", b"", qos=1, retain=True)  # clear it
    for c in (keep, clear, publisher):
        c.close()


def retain_handling(port):
    """Retain Handling: 0 sends retained messages on every subscribe
    [MQTT-3.3.1-9]; 1 only when the subscription is new [MQTT-3.3.1-10];
    2 never [MQTT-3.3.1-11]. Retained messages sent on subscribe have RETAIN
    1 [MQTT-3.3.1-9]."""
    publisher = Client(port)
    publisher.publish("rh/t", b"r", qos=1, retain=True)
    c = Client(port)
    c.subscribe("rh/t", qos=1, retainHandling=0)
    assert c.receive().retain is True
    c.subscribe("rh/t", qos=1, retainHandling=0)
    assert c.receive().payload == b"r", "RH 0: again on re-subscribe"
    c.subscribe("rh/+", qos=1, retainHandling=1)
    assert c.receive().payload == b"r", "RH 1: a new subscription"
    c.subscribe("rh/+", qos=1, retainHandling=1)
    c.nothing()
    c.subscribe("rh/#", qos=1, retainHandling=2)
    c.nothing()
    publisher.publish("rh/t", b"", qos=1, retain=True)
    c.close()
    publisher.close()


# --- Request/response and user properties ----------------------------------------------------

def properties_pass_through(port):
    """Request/response and metadata reach the subscriber untouched: Response
    Topic [MQTT-3.3.2-15], Correlation Data [MQTT-3.3.2-16], user properties
    in order, duplicates kept [MQTT-3.3.2-17], [MQTT-3.3.2-18], Content Type
    [MQTT-3.3.2-20], Payload Format Indicator [MQTT-3.3.2-4]."""
    responder = Client(port)
    responder.subscribe("rr/requests", qos=1)
    requester = Client(port)
    requester.subscribe("rr/replies/1", qos=1)
    p = props(PacketTypes.PUBLISH, ResponseTopic="rr/replies/1", CorrelationData=b"\xffreq-1",
              ContentType="text/plain; charset=utf-8", PayloadFormatIndicator=1)
    p.UserProperty = ("b", "2")
    p.UserProperty = ("a", "1")
    p.UserProperty = ("b", "3")
    requester.publish("rr/requests", "refund 12.50".encode(), qos=1, properties=p)
    m = responder.receive()
    q = m.properties
    assert (q.ResponseTopic, q.CorrelationData) == ("rr/replies/1", b"\xffreq-1"), q
    assert q.UserProperty == [("b", "2"), ("a", "1"), ("b", "3")], q.UserProperty
    assert (q.ContentType, q.PayloadFormatIndicator) == ("text/plain; charset=utf-8", 1), q
    reply = props(PacketTypes.PUBLISH, CorrelationData=q.CorrelationData)
    responder.publish(q.ResponseTopic, b"ok", qos=1, properties=reply)
    r = requester.receive()
    assert (r.payload, r.properties.CorrelationData) == (b"ok", b"\xffreq-1"), r.properties
    responder.close()
    requester.close()


# --- Shared subscriptions --------------------------------------------------------------------

def shared_subscriptions(port):
    """§4.8.2: each message matching a shared subscription goes to one member
    of its group (here in turn); a plain subscription to the same filter still
    gets every message. Retained messages are not sent for a new shared
    subscription. CONNACK says Shared Subscription Available [MQTT-3.2.2-?]."""
    publisher = Client(port)
    assert getattr(publisher.connack, "SharedSubscriptionAvailable", 1) == 1
    publisher.publish("jobs/retained", b"r", qos=1, retain=True)
    workers = [Client(port) for _ in range(2)]
    for w in workers:
        assert w.subscribe("$share/printers/jobs/+", qos=1)[0].value == 1
        w.nothing(0.3)  # no retained message for a shared subscription
    watcher = Client(port)
    watcher.subscribe("jobs/+", qos=1, retainHandling=2)
    for i in range(10):
        publisher.publish(f"jobs/{i}", str(i).encode(), qos=1)
    shares = [[w.receive().payload for _ in range(5)] for w in workers]
    for w in workers:
        w.nothing()
    assert sorted(shares[0] + shares[1]) == sorted(str(i).encode() for i in range(10)), shares
    assert len({m for m in shares[0]} & {m for m in shares[1]}) == 0, "a message went to both"
    assert len([watcher.receive() for _ in range(10)]) == 10
    for c in workers + [watcher]:
        c.close()
    publisher.publish("jobs/retained", b"", qos=1, retain=True)
    publisher.close()


def slow_and_fast_members(port):
    """Two members of $share/g/work/+: the first never acknowledges (manual
    ack), the second acknowledges at once; and a publisher."""
    slow = Client(port, manual_ack=True)
    slow.subscribe("$share/g/work/+", qos=1)
    fast = Client(port)
    fast.subscribe("$share/g/work/+", qos=1)
    return slow, fast, Client(port)


def shared_redelivery(port):
    """MQTT 5 §4.8.2: a member that goes away with unacknowledged messages
    does not keep them from the group: another member gets them."""
    slow, fast, publisher = slow_and_fast_members(port)
    for i in range(6):
        publisher.publish(f"work/{i}", str(i).encode(), qos=1)
    held = [slow.receive() for _ in range(3)]  # never acknowledged
    got_fast = [fast.receive().payload for _ in range(3)]
    slow.drop()
    redelivered = [fast.receive().payload for _ in range(3)]
    assert sorted(redelivered) == sorted(m.payload for m in held), (redelivered, held)
    assert sorted(got_fast + redelivered) == [str(i).encode() for i in range(6)]
    fast.close()
    publisher.close()


def shared_least_busy(port):
    """§4.8.2 lets the server choose the member: with least_busy, one that
    leaves its messages unacknowledged gets no more while another keeps up."""
    slow, fast, publisher = slow_and_fast_members(port)
    for i in range(6):
        publisher.publish(f"work/{i}", str(i).encode(), qos=1)
        time.sleep(0.3)  # the fast member has acknowledged by now
    assert slow.receive().payload == b"0"  # both idle: the first member
    slow.nothing()
    got = [fast.receive().payload for _ in range(5)]
    assert got == [str(i).encode() for i in range(1, 6)], got
    fast.close()
    slow.close()
    publisher.close()


def shared_acl(port, user, password):
    """The device ACL applies to the filter inside $share/<group>/: a device
    may share its own downlink namespace, not another device's (0x87)."""
    c = Client(port, client_id=user, login=(user, password))
    own = c.subscribe(f"$share/g/devices/{user}/down/#", qos=1)[0]
    other = c.subscribe("$share/g/devices/someone-else/down/#", qos=1)[0]
    assert own.value == 1, f"own namespace: {own}"
    assert other.value == 0x87, f"another device's namespace: {other} ({other.value:#x})"
    c.close()


CASES = {f.__name__: f for f in [
    qos_downgrade, message_expiry, session_expiry, will_properties, subscription_identifiers,
    topic_alias_from_client, topic_alias_to_client, server_keep_alive, receive_maximum,
    maximum_packet_size, no_local, retain_as_published, retain_handling,
    properties_pass_through, shared_subscriptions, shared_redelivery, shared_least_busy,
    shared_acl,
]}

if __name__ == "__main__":
    case, port, *login = sys.argv[1:]
    CASES[case](int(port), *login)
    print(f"{case}: ok")
