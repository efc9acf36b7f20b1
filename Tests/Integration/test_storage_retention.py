"""(#13) Storage that stays within its bounds: retention deletes old telemetry in chunks, oldest first,
while publishers run; a disk running out of space pauses storing (back-pressure) instead of failing
writes, and nothing acknowledged is lost. iotgw only.

The disk-space test needs no special file system: it sets `storage.min_free_bytes` just under the free
space of the file system the test directory is on, then takes space away with a ballast file (64 MB
more than the margin, so other writers on the machine cannot flip the outcome) and gives it back.
"""

from __future__ import annotations

import os
import time
import urllib.request

import pytest

from helpers import PahoClient, is_mosquitto, stop_all, unique, wait_until
from operations_helpers import metric_samples
from test_storage import query, storage_broker

pytestmark = pytest.mark.skipif(is_mosquitto(), reason="iotgw only: telemetry storage")


def metric(broker, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/metrics", timeout=5).read().decode()
    return sum(v for (n, _), v in metric_samples(text).items() if n == name)


def wait_all_published(infos, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for info in infos:
        info.wait_for_publish(max(0.001, deadline - time.monotonic()))
        assert info.is_published(), "a QoS 1 message was not acknowledged in time"


def readyz(broker) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_retention_keeps_the_newest_rows_deleting_the_oldest_in_chunks_while_publishing(make_broker):
    broker = make_broker(
        config_format="json",
        admin={"enabled": True},
        storage={"retention": {"max_rows": 2000, "interval": 0.3, "chunk_rows": 500}},
    )
    topic = unique("retain")
    pub = PahoClient(broker.port, unique("pub")).start()
    try:
        # 6,000 QoS 1 messages, acknowledged after their commit, while retention passes run.
        infos = [pub.publish(topic, str(i).encode(), qos=1, timeout=None) for i in range(6000)]
        wait_all_published(infos, timeout=60)
        # Passes keep deleting until at most the newest 2,000 rows are left.
        wait_until(lambda: query(broker, "SELECT COUNT(*) AS n FROM messages")[0]["n"] <= 2000, timeout=20,
                   message="retention did not bring the table down to max_rows")
        rows = query(broker, "SELECT id, payload FROM messages ORDER BY id")
        seqs = [int(bytes(r["payload"])) for r in rows]
        # The newest rows are the ones kept, and what is kept is contiguous: oldest first.
        assert seqs[-1] == 5999, seqs[-5:]
        assert seqs == list(range(seqs[0], 6000)), "retention left a gap or kept older rows"
        assert len(seqs) >= 1500, f"too much deleted: {len(seqs)} left"
        deleted = metric(broker, "iotgw_retention_deleted_rows_total")
        chunks = metric(broker, "iotgw_retention_chunks_total")
        assert deleted >= 4000, deleted
        # Chunks of at most 500 rows.
        assert chunks >= deleted / 500, (chunks, deleted)
    finally:
        stop_all([pub])


def test_low_disk_space_pauses_storing_and_resumes_without_losing_acknowledged_messages(make_broker, tmp_path):
    stats = os.statvfs(tmp_path)
    free = stats.f_bavail * stats.f_frsize
    margin = 32 * 1024 * 1024
    if free < 512 * 1024 * 1024:
        pytest.skip(f"only {free} bytes free on the test file system")
    broker = make_broker(config_format="json", admin={"enabled": True}, storage={"min_free_bytes": free - margin})
    assert readyz(broker)[0] == 200
    topic = unique("disk")
    pub = PahoClient(broker.port, unique("pub")).start()
    ballast = tmp_path / "ballast"
    try:
        before = [pub.publish(topic, f"before-{i}".encode(), qos=1, timeout=None) for i in range(100)]
        wait_all_published(before, timeout=20)

        # Take the space away: storing pauses, /readyz says why.
        with open(ballast, "wb") as f:
            f.truncate(0)
            chunk = b"\0" * (1024 * 1024)
            for _ in range((margin + 64 * 1024 * 1024) // len(chunk)):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        wait_until(lambda: metric(broker, "iotgw_storage_disk_low") == 1, timeout=10,
                   message="the gateway did not notice the low disk space")
        status, body = readyz(broker)
        assert status == 503 and "disk" in body and "min_free_bytes" in body, (status, body)
        infos = [pub.publish(topic, f"during-{i}".encode(), qos=1, timeout=None) for i in range(50)]
        # Held back: not acknowledged (not stored) while the disk is low.
        wait_until(lambda: metric(broker, "iotgw_ingest_backpressure_waits_total") >= 1, timeout=10,
                   message="publishers were not held back")
        acked_while_low = sum(1 for info in infos if info.is_published())
        assert acked_while_low == 0, f"{acked_while_low} messages acknowledged while storing was paused"

        # Give the space back: storing resumes and every message is acknowledged and stored.
        ballast.unlink()
        wait_all_published(infos, timeout=30)
        wait_until(lambda: readyz(broker)[0] == 200, timeout=10, message="/readyz did not recover")
        stored = {bytes(r["payload"]).decode() for r in query(broker, "SELECT payload FROM messages WHERE topic = ?", (topic,))}
        expected = {f"before-{i}" for i in range(100)} | {f"during-{i}" for i in range(50)}
        assert expected <= stored, f"missing: {sorted(expected - stored)[:5]}"
        assert metric(broker, "iotgw_ingest_commit_failures_total") == 0
    finally:
        if ballast.exists():
            ballast.unlink()
        stop_all([pub])
