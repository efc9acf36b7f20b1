"""(Data plane) limits.slow_consumer: backpressure. Publishers that fill a slow QoS 1 subscriber's queue stop
being read (TCP pushes back) instead of the subscriber being cut off or messages being lost; a subscriber that
stays stalled past limits.slow_consumer_timeout is disconnected and its publishers resume."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

from helpers import (
    PUBACK,
    PUBLISH,
    ConnectionClosed,
    RawClient,
    connect_packet,
    iotgw_only,
    publish_packet,
    raw_connected,
    rss_kib,
    unique,
    wait_until,
)
from conftest import IOTGW_BIN, REPO
from operations_helpers import get, metric_samples

ADMIN = {"enabled": True}


def _metrics(b) -> dict:
    r = get(b.admin_port, "/metrics")
    assert r.status == 200, r
    return metric_samples(r.body.decode())


class Publisher(threading.Thread):
    """Sends `count` QoS 1 PUBLISHes as fast as the socket takes them (no in-flight limit), while a second
    thread reads the PUBACKs. `stalled` is the longest single sendall, which shows the broker stopped
    reading."""

    def __init__(self, port: int, topic: str, name: str, count: int, payload_size: int = 64):
        super().__init__(daemon=True)
        self.client = raw_connected(port, name)
        self.topic, self.name, self.count = topic, name, count
        self.payload_pad = b"." * max(0, payload_size - 16)
        self.acked: set[int] = set()
        self.error: BaseException | None = None
        self.sent = 0
        self.stalled = 0.0
        self._reader = threading.Thread(target=self._read_acks, daemon=True)

    def _read_acks(self) -> None:
        try:
            while len(self.acked) < self.count:
                p = self.client.read_packet(timeout=60)
                if p.type == PUBACK:
                    self.acked.add(int.from_bytes(p.raw[2:4], "big"))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = self.error or e

    def run(self) -> None:
        self._reader.start()
        try:
            for i in range(self.count):
                packet_id = i % 65535 + 1
                body = f"{self.name}:{i:08d}".encode() + self.payload_pad
                started = time.monotonic()
                self.client.send(publish_packet(self.topic, body, qos=1, packet_id=packet_id))
                self.stalled = max(self.stalled, time.monotonic() - started)
                self.sent += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self._reader.join(timeout=60)


def _receive(sub: RawClient, expected: int, timeout: float) -> list[bytes]:
    """Reads PUBLISHes and acknowledges each at once, until `expected` arrived."""
    payloads = []
    deadline = time.monotonic() + timeout
    while len(payloads) < expected:
        p = sub.read_packet(timeout=max(0.1, deadline - time.monotonic()))
        assert p.type == PUBLISH, f"subscriber got packet type {p.type}, expected PUBLISH"
        _, packet_id, payload = p.publish_fields()
        sub.send(bytes([0x40, 0x02]) + packet_id.to_bytes(2, "big"))
        payloads.append(payload)
    return payloads


def test_fast_publishers_slow_subscriber_lose_nothing(make_broker):
    """10 publishers at full speed into one QoS 1 subscriber whose queue holds 100 messages and who does not
    read for the first second: every message arrives exactly once, in order per publisher, the subscriber
    stays connected, the publishers were paused (counted) and the queue stayed near its cap."""
    iotgw_only("limits.slow_consumer is iotgw's")
    b = make_broker(admin=ADMIN, storage={"enabled": False},
                    limits={"max_queued_messages": 100, "max_inflight": 20, "slow_consumer_timeout": 60})
    topic = unique("bp")
    publishers_count, per_publisher = 10, 1000
    sub = RawClient(b.port, rcvbuf=8192)
    sub.connect(unique("slow-sub"))
    sub.subscribe(1, [(f"{topic}/#", 1)])
    publishers = [Publisher(b.port, f"{topic}/{n}", f"p{n}", per_publisher) for n in range(publishers_count)]
    try:
        for p in publishers:
            p.start()
        # Stalled: the subscriber reads nothing while its queue fills and the publishers get paused.
        paused = wait_until(lambda: _metrics(b).get(("iotgw_publisher_pauses_total", ()), 0) >= 1, 20,
                            interval=0.1, message="a publisher paused by back-pressure")
        assert paused
        # Housekeeping samples the queue gauge every second: wait until it shows the full queue.
        queued_while_stalled = wait_until(lambda: _metrics(b).get(("iotgw_queued_messages", ()), 0) >= 100 or None,
                                          20, interval=0.2, message="the subscriber's queue full")
        queued_while_stalled = _metrics(b)[("iotgw_queued_messages", ())]
        payloads = _receive(sub, publishers_count * per_publisher, timeout=120)
        for p in publishers:
            p.join(timeout=60)
            assert p.error is None, f"{p.name}: {p.error!r}"
            assert p.acked == set(range(1, per_publisher + 1)), f"{p.name}: {len(p.acked)} PUBACKs"
        by_publisher: dict[str, list[int]] = {}
        for payload in payloads:
            name, number = payload.split(b".")[0].decode().split(":")
            by_publisher.setdefault(name, []).append(int(number))
        for n in range(publishers_count):
            assert by_publisher.get(f"p{n}") == list(range(per_publisher)), f"p{n}: order or count wrong"
        samples = _metrics(b)
        assert samples[("iotgw_disconnects_total", (("reason", "slow_consumer"),))] == 0
        assert samples[("iotgw_messages_dropped_total", (("reason", "queue_full_qos12"),))] == 0
        assert samples[("iotgw_publisher_pauses_total", ())] >= 1
        # Over the cap only by what paused publishers had already read: at most one 64 KiB socket read of
        # ~90-byte PUBLISHes each, far below the 10,000 sent.
        assert queued_while_stalled <= 100 + publishers_count * (65536 // 80), queued_while_stalled
        # Still connected: a PINGREQ is answered.
        sub.send(bytes([0xC0, 0x00]))
        assert sub.read_packet(timeout=10).type == 13
    finally:
        for p in publishers:
            p.client.close()
        sub.close()


def test_stalled_subscriber_is_disconnected_after_timeout_and_publishers_resume(make_broker):
    """A QoS 1 subscriber that never reads, with limits.slow_consumer_timeout 2 s: its publisher is paused
    (its sends stall), then the subscriber is disconnected (counted as slow_consumer) and every message the
    publisher sent is acknowledged. The broker's memory does not grow with what the publisher tried to send."""
    iotgw_only("limits.slow_consumer is iotgw's")
    b = make_broker(admin=ADMIN, storage={"enabled": False},
                    limits={"max_queued_messages": 50, "slow_consumer_timeout": 2})
    topic = unique("stall")
    sub = RawClient(b.port, rcvbuf=4096)
    sub.connect(unique("stalled-sub"))
    sub.subscribe(1, [(topic, 1)])
    rss_start = rss_kib(b.pid)
    count = 20_000
    publisher = Publisher(b.port, topic, "pub", count, payload_size=1024)
    started = time.monotonic()
    try:
        publisher.start()
        wait_until(lambda: _metrics(b).get(("iotgw_disconnects_total", (("reason", "slow_consumer"),)), 0) == 1, 30,
                   interval=0.1, message="the stalled subscriber disconnected as a slow consumer")
        disconnected_after = time.monotonic() - started
        assert disconnected_after >= 1.5, f"disconnected after {disconnected_after:.1f}s, before the 2 s timeout"
        peak = rss_kib(b.pid)
        publisher.join(timeout=60)
        assert publisher.error is None, repr(publisher.error)
        assert publisher.acked == set(range(1, count + 1)), f"{len(publisher.acked)} of {count} PUBACKs"
        assert publisher.stalled >= 0.5, f"the publisher was never held back (longest send {publisher.stalled:.2f}s)"
        # 20 MB were sent in all; while the subscriber was stalled they were not taken in.
        assert peak - rss_start < 16 * 1024, f"RSS grew from {rss_start} to {peak} KiB while stalled"
        try:
            sub.sock.settimeout(5)
            while sub.sock.recv(65536):
                pass
        except (ConnectionResetError, socket.timeout, ConnectionClosed):
            pass
    finally:
        publisher.client.close()
        sub.close()
    assert b.alive()


def test_qos0_backpressure_at_full_speed_loses_nothing(make_broker):
    """limits.qos0_when_full: backpressure, driven by `iotgw simulate` (libmosquitto): 10 devices publishing
    QoS 0 as fast as the gateway reads them into one QoS 0 consumer. Every message published arrives and the
    gateway drops none: the publishers are paused instead (counted).

    Also the simulator's own accounting: its drain must wait for every engine's report after its last
    publish. It used to end as soon as the consumer caught up with a publisher's previous report (engines
    report every 50 ms), disconnecting while the last messages were still in the gateway's socket buffers,
    and counted those as lost (up to a third of a run at full speed)."""
    iotgw_only("limits.qos0_when_full is iotgw's")
    b = make_broker(admin=ADMIN, storage={"enabled": False},
                    limits={"qos0_when_full": "backpressure", "max_queued_messages": 1000, "slow_consumer_timeout": 60})
    scenario = REPO / "Configs" / "scenarios" / "bench-qos0-10to1-max.yaml"
    run = subprocess.run(
        [str(IOTGW_BIN), "simulate", "--scenario", str(scenario), "--port", str(b.port), "--duration", "3s",
         "--drain", "60s", "--json", "--quiet"],
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    messages = json.loads(run.stdout)["messages"]
    assert messages["published"] >= 10_000, messages
    assert messages["lost"] == 0 and messages["delivered"] == messages["published"], messages
    samples = _metrics(b)
    assert samples[("iotgw_messages_received_total", (("qos", "0"),))] == messages["published"]
    assert samples[("iotgw_messages_dropped_total", (("reason", "queue_full_qos0"),))] == 0
    assert samples[("iotgw_messages_dropped_total", (("reason", "global_cap"),))] == 0
    assert samples[("iotgw_publisher_pauses_total", ())] >= 1
