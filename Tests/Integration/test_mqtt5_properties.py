"""MQTT 5 properties: request/response and message properties passed through unchanged,
Payload Format Indicator checked, and what CONNACK advertises (paho-mqtt MQTTv5,
``mosquitto_pub``/``mosquitto_sub -V 5``, raw sockets)."""

from __future__ import annotations

import queue
import subprocess
import time

from helpers import (
    P_PAYLOAD_FORMAT,
    P_SERVER_KEEP_ALIVE,
    PUBACK,
    MosquittoSub,
    PahoV5Client,
    RawClient5,
    iotgw_only,
    is_mosquitto,
    parse_ack5,
    prop,
    publish5_packet,
    raw5_connected,
    unique,
)

def next_line_starting(sub: MosquittoSub, prefix: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = sub.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"no line starting {prefix!r}; output:\n" + "\n".join(sub.output)) from None
        assert line is not None, "mosquitto_sub exited; output:\n" + "\n".join(sub.output)
        if line.startswith(prefix):
            return line


USER_PROPERTIES = [("k", "v1"), ("a", "b"), ("k", "v2"), ("ünï", "çødé")]  # duplicate key, order matters


def test_request_response_properties_pass_through(broker):
    """Response Topic, Correlation Data (binary), User Properties (several, a duplicate key,
    order kept), Content Type and Payload Format Indicator reach the subscriber unchanged; the
    responder answers on the Response Topic with the same Correlation Data."""
    requester = PahoV5Client(broker.port, unique("req")).start()
    responder = PahoV5Client(broker.port, unique("resp")).start()
    try:
        request_topic, reply_topic = unique("svc/req"), unique("svc/reply")
        assert responder.subscribe(request_topic, 1) == [1]
        assert requester.subscribe(reply_topic, 1) == [1]
        correlation = b"\x00\xffcorr\x80"
        sent = {
            "ResponseTopic": reply_topic,
            "CorrelationData": correlation,
            "UserProperty": USER_PROPERTIES,
            "ContentType": "application/json; charset=utf-8",
            "PayloadFormatIndicator": 1,
        }
        requester.publish(request_topic, b'{"op":"ping"}', qos=1, properties=sent)

        req = responder.get(what="the request")
        assert req.payload == b'{"op":"ping"}'
        assert {k: req.properties.get(k) for k in sent} == sent

        responder.publish(req.properties["ResponseTopic"], b'{"op":"pong"}', qos=1,
                          properties={"CorrelationData": req.properties["CorrelationData"]})
        reply = requester.get(what="the reply")
        assert (reply.topic, reply.payload, reply.properties.get("CorrelationData")) == (
            reply_topic, b'{"op":"pong"}', correlation)
    finally:
        requester.stop()
        responder.stop()


def test_properties_pass_through_mosquitto_clients(broker):
    """The same properties set with ``mosquitto_pub -V 5 -D publish ...`` are printed unchanged
    by ``mosquitto_sub -V 5`` (%P user properties in order, %R, %D, %C, %F)."""
    topic = unique("props")
    sub = MosquittoSub(broker.port, [topic], qos=1,
                       extra=["-V", "5", "-F", "MSG P=[%P] R=[%R] D=[%D] C=[%C] F=[%F] p=[%p]"])
    try:
        sub.wait_subscribed()
        argv = ["mosquitto_pub", "-V", "5", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                "-t", topic, "-m", "hello", "-i", unique("mpub"),
                "-D", "publish", "response-topic", "reply/here",
                "-D", "publish", "correlation-data", "corr-42",
                "-D", "publish", "content-type", "text/plain",
                "-D", "publish", "payload-format-indicator", "1"]
        for k, v in USER_PROPERTIES[:3]:
            argv += ["-D", "publish", "user-property", k, v]
        result = subprocess.run(argv, capture_output=True, timeout=10)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        line = next_line_starting(sub, "MSG ")
        assert line == "MSG P=[k:v1 a:b k:v2] R=[reply/here] D=[corr-42] C=[text/plain] F=[1] p=[hello]", line
    finally:
        sub.kill()


def test_payload_format_invalid_utf8_puback_0x99(broker):
    """QoS 1 PUBLISH with Payload Format Indicator 1 and a payload that is not UTF-8: PUBACK
    reason 0x99 (Payload format invalid), and the message is not delivered."""
    iotgw_only("mosquitto 2.0.11 does not check the payload against the indicator (measured: PUBACK 0x00)")
    topic = unique("pfi")
    sub = PahoV5Client(broker.port, unique("sub")).start()
    try:
        assert sub.subscribe(topic, 1) == [1]
        with raw5_connected(broker.port) as c:
            c.send(publish5_packet(topic, b"ok \xff\xfe not utf-8", qos=1, packet_id=7,
                                   properties=[(P_PAYLOAD_FORMAT, 1)]))
            ack = c.expect_packet(what="PUBACK")
            assert ack.type == PUBACK, f"expected PUBACK, got {ack!r}"
            assert parse_ack5(ack)[:2] == (7, 0x99), f"PUBACK {ack!r}"
            # Valid UTF-8 with the indicator is accepted and serves as the fence.
            c.send(publish5_packet(topic, "fence ✓".encode(), qos=1, packet_id=8,
                                   properties=[(P_PAYLOAD_FORMAT, 1)]))
            ack = c.expect_packet(what="PUBACK")
            assert parse_ack5(ack)[:2] == (8, 0), f"PUBACK {ack!r}"
        before = sub.until("fence ✓".encode())
        assert before == [], f"invalid payload was delivered: {before}"
    finally:
        sub.stop()


def test_connack_properties(make_broker):
    """CONNACK advertises Maximum Packet Size (the configured limit), a Topic Alias Maximum > 0,
    and Wildcard / Subscription Identifier / Shared Subscription Available (iotgw sends all three
    as 1; for mosquitto, which omits them, absence means available)."""
    b = make_broker(limits={"max_packet_size": 4096})
    c = PahoV5Client(b.port, unique("ca")).start()
    try:
        props = c.connack_properties
    finally:
        c.stop()
    assert props.get("MaximumPacketSize") == 4096, props
    assert props.get("TopicAliasMaximum", 0) > 0, props
    for name in ("WildcardSubscriptionAvailable", "SubscriptionIdentifierAvailable", "SharedSubscriptionAvailable"):
        if is_mosquitto():
            assert props.get(name, 1) == 1, props
        else:
            assert props.get(name) == 1, f"{name} not advertised: {props}"


def test_assigned_client_identifier(broker):
    """An empty client id with Clean Start 1 is accepted and CONNACK carries the Assigned Client
    Identifier; two such clients get different ids."""
    ids = []
    for _ in range(2):
        c = PahoV5Client(broker.port, "").start()
        try:
            ids.append(c.connack_properties.get("AssignedClientIdentifier"))
        finally:
            c.stop()
    assert all(isinstance(i, str) and i for i in ids), ids
    assert ids[0] != ids[1], ids


def test_server_keep_alive(make_broker):
    """With a maximum keep-alive of 10 s configured, a client asking for 60 s gets Server Keep
    Alive 10 in CONNACK; one asking for 5 s keeps its own (no Server Keep Alive, or 5)."""
    if is_mosquitto():
        b = make_broker(start=False)
        with open(b.config_path, "a") as f:  # mosquitto's equivalent of limits.max_keep_alive
            f.write("max_keepalive 10\n")
        b.start()
    else:
        b = make_broker(limits={"max_keep_alive": 10})
    results = {}
    for asked in (60, 5):
        c = PahoV5Client(b.port, unique("ka"), keepalive=asked).start()
        try:
            results[asked] = c.connack_properties.get("ServerKeepAlive")
        finally:
            c.stop()
    assert results[60] == 10, results
    assert results[5] in (None, 5), results


def test_server_keep_alive_enforced(make_broker):
    """The Server Keep Alive is the one enforced: a raw client that asked for 60 s but was told
    1 s is disconnected after about 1.5 s of silence."""
    iotgw_only("mosquitto documents max_keepalive as 'do not set below 10 seconds'")
    b = make_broker(limits={"max_keep_alive": 1})
    with RawClient5(b.port) as c:
        ack = c.connect5(unique("ka1"), keepalive=60)
        assert prop(ack.properties, P_SERVER_KEEP_ALIVE) == 1, ack
        assert c.closed_within(4.0), "not closed within 4 s with a Server Keep Alive of 1 s"
