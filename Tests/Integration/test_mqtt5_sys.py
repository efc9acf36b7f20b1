"""``$SYS/broker/...`` statistics, published as retained messages every ``mqtt.sys_interval``
seconds (``sys_interval`` in mosquitto.conf), seen by paho-mqtt MQTTv5 subscribers."""

from __future__ import annotations

import time

from helpers import PahoV5Client, is_mosquitto, stop_all, unique, wait_until

SYS_TOPICS = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/uptime",
    "$SYS/broker/version",
]


def sys_broker(make_broker, interval: int):
    if is_mosquitto():
        # conftest ignores mqtt.* keys for mosquitto; its own option has the same meaning.
        b = make_broker(start=False)
        with open(b.config_path, "a") as f:
            f.write(f"sys_interval {interval}\n")
        return b.start()
    return make_broker(mqtt={"sys_interval": interval})


def number(topic: str, payload: bytes) -> float:
    text = payload.decode()
    if is_mosquitto() and topic.endswith("/uptime"):
        text = text.removesuffix(" seconds")  # mosquitto publishes "12 seconds"
    try:
        return float(text)
    except ValueError:
        raise AssertionError(f"{topic} is not a number: {payload!r}") from None


def test_sys_topics(make_broker):
    """With sys_interval 1: every statistic appears (numbers; the version a non-empty string);
    clients/connected follows clients connecting and leaving; a client subscribing later gets
    every statistic as a retained message."""
    b = sys_broker(make_broker, 1)
    sub = PahoV5Client(b.port, unique("sys")).start()
    idle = [PahoV5Client(b.port, unique("idle")).start() for _ in range(2)]
    late = None
    try:
        assert sub.subscribe("$SYS/broker/#", 0) == [0]
        idle[0].publish(unique("stats"), b"p" * 100, qos=1)  # so that messages/bytes received count
        latest: dict[str, bytes] = {}

        def value(name: str) -> float:
            return number(f"$SYS/broker/{name}", latest[f"$SYS/broker/{name}"])

        def seen(connected: int):
            def check() -> bool:
                for m in sub.drain():
                    latest[m.topic] = m.payload
                return (all(t in latest for t in SYS_TOPICS) and value("clients/connected") == connected
                        and value("messages/received") >= 1 and value("bytes/received") >= 100)
            return check

        wait_until(seen(3), 6, message=f"all of {SYS_TOPICS} with clients/connected 3 and the publish counted")
        for t in SYS_TOPICS[:-1]:
            assert number(t, latest[t]) >= 0, (t, latest[t])
        assert latest["$SYS/broker/version"].decode().strip(), "empty version"

        stop_all(idle)
        wait_until(seen(1), 6, message="clients/connected 1 after two clients left")

        late = PahoV5Client(b.port, unique("late")).start()
        assert late.subscribe("$SYS/broker/#", 0) == [0]
        retained: dict[str, bool] = {}

        def all_retained() -> bool:
            for m in late.drain():
                retained.setdefault(m.topic, m.retain)
            return all(t in retained for t in SYS_TOPICS)

        wait_until(all_retained, 3, message="retained $SYS messages for a new subscriber")
        not_retained = [t for t in SYS_TOPICS if not retained[t]]
        assert not not_retained, f"first delivery not retained: {not_retained}"
    finally:
        stop_all([sub] + idle + ([late] if late else []))


def test_sys_interval_zero_publishes_nothing(make_broker):
    """sys_interval 0: no $SYS message, retained or periodic, within 1.5 s (a deliberate silence
    longer than the 1 s interval of the test above), then a fence on an ordinary topic."""
    b = sys_broker(make_broker, 0)
    sub = PahoV5Client(b.port, unique("sys0")).start()
    try:
        fence_topic = unique("fence")
        assert sub.subscribe("$SYS/#", 0) == [0]
        assert sub.subscribe(fence_topic, 1) == [1]
        time.sleep(1.5)
        sub.publish(fence_topic, b"fence", qos=1)
        before = sub.until(b"fence")
        assert before == [], f"$SYS published with sys_interval 0: {[m.topic for m in before]}"
    finally:
        sub.stop()
