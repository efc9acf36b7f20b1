"""MQTT 5 subscription options (No Local, Retain As Published, Retain Handling) and
Subscription Identifiers, with paho-mqtt (MQTTv5).

"Not delivered" is checked with a fence: a later message on a topic the client is subscribed
to; whatever would have been delivered arrives before it.
"""

from __future__ import annotations

import pytest

from helpers import PahoV5Client, is_mosquitto, unique


@pytest.fixture
def clients(broker):
    """Factory for started paho v5 clients, all stopped at teardown."""
    made: list[PahoV5Client] = []

    def make(prefix: str = "c") -> PahoV5Client:
        c = PahoV5Client(broker.port, unique(prefix)).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def test_no_local(clients):
    """A client subscribed with No Local does not get its own message; another subscriber does;
    messages from others still reach it."""
    topic = unique("nl")
    a, b = clients("a"), clients("b")
    assert a.subscribe(topic, 1, no_local=True) == [1]
    assert b.subscribe(topic, 1) == [1]
    a.publish(topic, b"from-a", qos=1)
    assert b.get().payload == b"from-a"
    b.publish(topic, b"from-b", qos=1)
    before = a.until(b"from-b")
    assert before == [], f"No Local subscriber received its own message: {before}"


def test_retain_as_published(clients):
    """A retained PUBLISH forwarded to existing subscribers keeps RETAIN=1 only for the one that
    subscribed with Retain As Published; a retained message sent on subscribe always has it."""
    topic = unique("rap")
    rap, plain, pub = clients("rap"), clients("plain"), clients("pub")
    assert rap.subscribe(topic, 1, retain_as_published=True) == [1]
    assert plain.subscribe(topic, 1) == [1]
    pub.publish(topic, b"live", qos=1, retain=True)
    m_rap, m_plain = rap.get(), plain.get()
    assert (m_rap.payload, m_rap.retain) == (b"live", True), "Retain As Published must keep RETAIN=1"
    assert (m_plain.payload, m_plain.retain) == (b"live", False), "without Retain As Published RETAIN is 0"

    late = clients("late")
    assert late.subscribe(topic, 1) == [1]
    m_late = late.get(what="the retained message on subscribe")
    assert (m_late.payload, m_late.retain) == (b"live", True)


@pytest.mark.parametrize("handling, on_new, on_resubscribe", [(0, True, True), (1, True, False), (2, False, False)],
                         ids=["rh0-always", "rh1-new-only", "rh2-never"])
def test_retain_handling(clients, handling, on_new, on_resubscribe):
    """Retain Handling 0 sends the retained message on every SUBSCRIBE, 1 only when the
    subscription is new (not when re-subscribing to the same filter), 2 never."""
    topic = unique(f"rh{handling}")
    pub = clients("pub")
    pub.publish(topic, b"retained", qos=1, retain=True)
    c = clients("sub")
    for attempt, expected in (("new subscription", on_new), ("re-subscription", on_resubscribe)):
        assert c.subscribe(topic, 1, retain_handling=handling) == [1]
        fence = unique("fence").encode()
        pub.publish(topic, fence, qos=1)
        before = c.until(fence)
        got = [(m.payload, m.retain) for m in before]
        assert got == ([(b"retained", True)] if expected else []), f"Retain Handling {handling}, {attempt}: {got}"


def test_subscription_identifiers(clients):
    """Two subscriptions with identifiers 1 and 2 that both match a topic: the message arrives
    once and carries both identifiers; a topic matching only one carries only that one; the
    identifier of a subscription that does not match is never sent."""
    c, pub = clients("sid"), clients("pub")
    base = unique("sid")
    assert c.subscribe(f"{base}/+/c", 1, subscription_id=1) == [1]
    assert c.subscribe(f"{base}/#", 1, subscription_id=2) == [1]
    assert c.subscribe(f"{base}-other/#", 1, subscription_id=3) == [1]

    pub.publish(f"{base}/b/c", b"both", qos=1)
    pub.publish(f"{base}/b/d", b"only-2", qos=1)
    pub.publish(f"{base}-other/x", b"only-3", qos=1)
    fence = unique("fence").encode()
    pub.publish(f"{base}/fence", fence, qos=1)
    got = [(m.payload, sorted(m.properties.get("SubscriptionIdentifier", []))) for m in c.until(fence)]
    both = [(b"both", [1, 2])]
    if is_mosquitto():
        # mosquitto 2.0.11 sends one copy per matching subscription, each with its own
        # identifier (also allowed by spec 3.3.4); iotgw sends one copy with both.
        both = [(b"both", [1]), (b"both", [2])]
    assert sorted(got) == both + [(b"only-2", [2]), (b"only-3", [3])], got
