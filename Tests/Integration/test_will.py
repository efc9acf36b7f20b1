"""(3) Will messages: published when a client vanishes, not when it sends DISCONNECT."""

from __future__ import annotations

import signal

import pytest

from helpers import (
    DISCONNECT_BYTES,
    MosquittoSub,
    PahoClient,
    RawClient,
    Will,
    barrier_publish,
    unique,
)


def test_will_published_when_mosquitto_sub_is_killed(broker):
    """SIGKILL a mosquitto_sub that has a will: the broker sees the socket close and publishes the will."""
    will_topic = unique("will") + "/status"
    watcher = PahoClient(broker.port).start()
    victim = MosquittoSub(broker.port, [unique("idle")], qos=0,
                          extra=["--will-topic", will_topic, "--will-payload", "offline", "--will-qos", "1"])
    try:
        watcher.subscribe([(will_topic, 1)])
        victim.wait_subscribed()
        victim.kill(signal.SIGKILL)
        m = watcher.get(timeout=5, what="the will after SIGKILL")
        assert (m.topic, m.payload, m.qos, m.retain) == (will_topic, b"offline", 1, False)
    finally:
        victim.kill()
        watcher.stop()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_will_published_when_raw_socket_drops(broker, how):
    """A raw client with a will closes its socket (FIN, or RST) without DISCONNECT: will published."""
    will_topic = unique("will")
    watcher = PahoClient(broker.port).start()
    try:
        watcher.subscribe([(will_topic, 2)])
        c = RawClient(broker.port)
        c.connect(unique("dying"), will=Will(will_topic, b"gone \x00\xff", qos=2))
        if how == "reset":
            c.abort()
        else:
            c.close()
        m = watcher.get(timeout=5, what=f"the will after socket {how}")
        assert (m.topic, m.payload, m.qos) == (will_topic, b"gone \x00\xff", 2)
    finally:
        watcher.stop()


def test_retained_will(broker):
    """A will with the retain flag becomes the retained message of its topic."""
    will_topic = unique("will") + "/retained"
    c = RawClient(broker.port)
    c.connect(unique("dying"), will=Will(will_topic, b"last words", qos=1, retain=True))
    c.abort()
    late = PahoClient(broker.port).start()
    try:
        late.subscribe([(will_topic, 1)])
        # The will is published asynchronously after the drop; a subscription made before it
        # lands would see it live (retain 0), so accept either but require the payload.
        m = late.get(timeout=5, what="the retained will")
        assert (m.topic, m.payload) == (will_topic, b"last words")
        late2 = PahoClient(broker.port).start()
        try:
            late2.subscribe([(will_topic, 1)])
            m2 = late2.get(timeout=5, what="the retained will for a later subscriber")
            assert (m2.payload, m2.retain) == (b"last words", True)
        finally:
            late2.stop()
    finally:
        late.stop()


def test_no_will_after_disconnect(broker):
    """A client that sends DISCONNECT before closing does not publish its will."""
    will_topic = unique("will")
    watcher = PahoClient(broker.port).start()
    try:
        watcher.subscribe([(will_topic, 1)])
        c = RawClient(broker.port)
        c.connect(unique("polite"), will=Will(will_topic, b"should not appear", qos=1))
        c.send(DISCONNECT_BYTES)
        # The broker closes the connection after DISCONNECT; once it has, it has decided.
        c.assert_closed(5, "after DISCONNECT")
        c.close()
        before = barrier_publish(broker.port, watcher, will_topic)
        assert before == [], f"will published despite DISCONNECT: {before}"
    finally:
        watcher.stop()


def test_no_will_after_paho_disconnect(broker):
    """Same with paho: will_set + a clean disconnect() publishes nothing on the will topic."""
    will_topic = unique("will")
    watcher = PahoClient(broker.port).start()
    polite = PahoClient(broker.port)
    polite.client.will_set(will_topic, b"nope", qos=1)
    try:
        watcher.subscribe([(will_topic, 1)])
        polite.start()
        polite.client.disconnect()
        assert polite.disconnected.wait(5), "paho did not report the disconnect"
        polite.stop()
        before = barrier_publish(broker.port, watcher, will_topic)
        assert before == [], f"will published despite DISCONNECT: {before}"
    finally:
        polite.stop()
        watcher.stop()
