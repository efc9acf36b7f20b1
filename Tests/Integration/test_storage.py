"""(issue 5) Durable ingestion: published messages in the gateway's SQLite file or PostgreSQL database.

The tests read ``<tmp>/dataN/iotgw.db`` with Python's ``sqlite3`` while the gateway runs (WAL lets a
reader in beside the writer) or after it stopped. The tests taking the ``backend`` fixture run on
PostgreSQL too (a fresh database on the test server, read with psycopg2; see postgres_helpers.py).
iotgw only: mosquitto has no such store.

The configs are written as JSON, since ``storage.topics`` is a list (the YAML emitter in conftest
writes scalars and maps only).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, IOTGW_BIN, deep_merge
from helpers import (PINGREQ_BYTES, PINGRESP_BYTES, PUBACK, PahoClient, PahoV5Client,
                     RawClient, RawClient5, free_port, is_mosquitto, parse_ack5, publish5_packet,
                     publish_packet, stop_all, unique, wait_until)

pytestmark = pytest.mark.skipif(is_mosquitto(), reason="iotgw only: durable ingestion into SQLite")

MESSAGES_COLUMNS = "id, received_at, client_id, topic, qos, retain, payload, properties"


def db_path(broker) -> Path:
    return Path(broker.config["storage"]["data_dir"]) / broker.config["storage"].get("sqlite", {}).get("file", "iotgw.db")


def query(broker, sql: str, params: tuple = ()) -> list:
    """Run one read query (``?`` placeholders) on the gateway's database, a fresh connection each time;
    rows are indexed by column name."""
    pg = getattr(broker, "postgres_db", None)
    if pg is not None:
        return pg.query(sql, params)
    path = db_path(broker)
    assert path.is_file(), f"no database at {path}"
    con = sqlite3.connect(str(path), timeout=5, isolation_level=None)
    try:
        con.row_factory = sqlite3.Row
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def stored_payloads(broker, topic_like: str = "%") -> list[bytes]:
    return [bytes(r["payload"]) for r in query(broker, "SELECT payload FROM messages WHERE topic LIKE ? ORDER BY id",
                                               (topic_like,))]


def storage_broker(make_broker, db=None, **storage):
    """A gateway storing into SQLite (``db`` None) or into the PostgreSQL database ``db``."""
    if db is not None:
        storage = {**db.storage_config(), **storage}
    broker = make_broker(config_format="json", storage=storage)
    broker.postgres_db = db
    return broker


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    """The storage backend under test: None for SQLite, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_db")


def acknowledged(info) -> bool:
    """True if the PUBACK for this publish arrived (paho raises for publishes it never sent)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class DatabaseLock:
    """An exclusive lock on the gateway's database, held by the test (the gateway's commits then fail)."""

    def __init__(self, broker):
        self.con = sqlite3.connect(str(db_path(broker)), timeout=5, isolation_level=None)
        self.con.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.con is not None:
            self.con.execute("ROLLBACK")
            self.con.close()
            self.con = None


# --------------------------------------------------------------------------------------
# ack: persisted


def test_persisted_qos1_every_puback_is_a_row(make_broker, backend):
    """ack: persisted (default): as soon as a QoS 1 PUBACK arrives, the message is a row with the right
    topic, payload, qos, retain, client id and properties; checked after every single PUBACK."""
    b = storage_broker(make_broker, backend, ack="persisted")
    client_id = unique("persist")
    pub = PahoClient(b.port, client_id=client_id).start()
    try:
        topic = unique("sensors") + "/temp"
        for i in range(20):
            payload = f"reading-{i}".encode()
            pub.publish(topic, payload, qos=1, retain=(i == 3))  # waits for the PUBACK
            rows = query(b, f"SELECT {MESSAGES_COLUMNS} FROM messages WHERE payload = ?", (payload,))
            assert len(rows) == 1, f"PUBACK for {payload!r} arrived but the row is {'missing' if not rows else 'duplicated'}"
            row = rows[0]
            assert row["topic"] == topic and row["client_id"] == client_id
            assert row["qos"] == 1 and row["retain"] == (1 if i == 3 else 0)
            assert row["properties"] is None, "an MQTT 3.1.1 message has no properties"
            assert abs(row["received_at"] / 1000 - time.time()) < 60, f"received_at {row['received_at']} is not epoch ms"
        # An empty payload is a legal message (it also clears a retained message): stored as an empty blob.
        empty_topic = unique("empty")
        pub.publish(empty_topic, b"", qos=1)
        rows = query(b, "SELECT payload FROM messages WHERE topic = ?", (empty_topic,))
        assert [bytes(r["payload"]) for r in rows] == [b""]
        assert stored_payloads(b, topic) == [f"reading-{i}".encode() for i in range(20)], "order or content differs"
    finally:
        pub.stop()

    # mosquitto_pub (libmosquitto) exits once its QoS 1 PUBACK arrived: the row is there when it does.
    mid = unique("mpub")
    mtopic = unique("mpub") + "/x"
    r = subprocess.run(["mosquitto_pub", "-V", "311", "-h", "127.0.0.1", "-p", str(b.port), "-q", "1",
                        "-i", mid, "-t", mtopic, "-m", "from-mosquitto_pub"], capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    rows = query(b, "SELECT client_id, qos, payload FROM messages WHERE topic = ?", (mtopic,))
    assert [(r["client_id"], r["qos"], bytes(r["payload"])) for r in rows] == [(mid, 1, b"from-mosquitto_pub")]


def test_persisted_mqtt5_properties_stored(make_broker, backend):
    """An MQTT 5 publish keeps its properties (encoded) in the properties column; QoS 2 is stored once."""
    b = storage_broker(make_broker, backend)
    client_id = unique("v5")
    pub = PahoV5Client(b.port, client_id=client_id).start()
    try:
        topic = unique("v5") + "/p"
        pub.publish(topic, b"with-props", qos=1, properties={"UserProperty": [("unit", "celsius")]})
        pub.publish(topic, b"qos2", qos=2)
        rows = query(b, "SELECT qos, payload, properties FROM messages WHERE topic = ? ORDER BY id", (topic,))
        assert [(r["qos"], bytes(r["payload"])) for r in rows] == [(1, b"with-props"), (2, b"qos2")]
        props = bytes(rows[0]["properties"] or b"")
        assert b"unit" in props and b"celsius" in props, f"user property not in the stored properties: {props!r}"
    finally:
        pub.stop()


# --------------------------------------------------------------------------------------
# storage.topics


def test_topic_filters_select_what_is_stored(make_broker):
    """Only topics matching storage.topics are stored; $SYS/... never is (refused, and `#` never matches it)."""
    base = unique("f")
    b = storage_broker(make_broker, topics=[f"{base}/sensors/#", f"{base}/alerts/+"])
    pub = PahoClient(b.port, client_id=unique("filt")).start()
    try:
        sent = {
            f"{base}/sensors": True, f"{base}/sensors/1/temp": True, f"{base}/alerts/fire": True,
            f"{base}/alerts/fire/2": False, f"{base}/other": False, "unrelated/topic": False,
        }
        for topic in sent:
            pub.publish(topic, topic.encode(), qos=1)
        # A QoS 0 publish on a stored topic is stored too.
        pub.publish(f"{base}/sensors/q0", b"q0", qos=0, timeout=None)
        # Acknowledgements leave in receive order: this PUBACK means all of the above were handled.
        pub.publish(f"{base}/sensors/last", b"last", qos=1)
        stored = {r["topic"] for r in query(b, "SELECT topic FROM messages")}
        assert stored == {t for t, s in sent.items() if s} | {f"{base}/sensors/q0", f"{base}/sensors/last"}
    finally:
        pub.stop()


def test_sys_never_stored_with_default_topics(make_broker):
    """Default storage.topics (#): a client's $SYS/... publish is refused and the gateway's own $SYS
    statistics are not stored either."""
    b = storage_broker(make_broker)
    pub = PahoClient(b.port, client_id=unique("sys")).start()
    sub = PahoClient(b.port, client_id=unique("sys-sub")).start()
    try:
        sub.subscribe([("$SYS/#", 0)])
        pub.publish("$SYS/forged", b"x", qos=1)
        pub.publish(unique("plain"), b"y", qos=1)
        # Wait for the gateway's own $SYS traffic, if it publishes any soon, before looking.
        try:
            sub.get(timeout=3, what="a $SYS message")
        except AssertionError:
            pass
        pub.publish(unique("plain"), b"z", qos=1)
        topics = [r["topic"] for r in query(b, "SELECT topic FROM messages")]
        assert not [t for t in topics if t.startswith("$")], f"$-topics stored: {topics}"
        assert len(topics) == 2
    finally:
        stop_all([pub, sub])


# --------------------------------------------------------------------------------------
# kill -9 under load

KILL_PUBLISHERS = 50
OUTSTANDING_PER_PUBLISHER = 8
KILL_AFTER_ACKED = 3000
KILL_LOAD_MAX_SECONDS = 8.0


class LoadDriver:
    """Publishes QoS 1 from every client round-robin on one thread, keeping a few messages outstanding
    per client; records every publish with paho's MQTTMessageInfo."""

    def __init__(self, pubs: list[PahoClient], topic: str):
        self.pubs = pubs
        self.topic = topic
        self.records: list[tuple[bytes, object]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def acked(self) -> int:
        with self._lock:
            records = list(self.records)
        return sum(1 for _, info in records if acknowledged(info))

    def _run(self) -> None:
        try:
            outstanding: list[list] = [[] for _ in self.pubs]
            seq = [0] * len(self.pubs)
            while not self._stop.is_set():
                sent_any = False
                for i, pub in enumerate(self.pubs):
                    if not pub.connected.is_set():
                        continue
                    outstanding[i] = [info for info in outstanding[i] if not acknowledged(info)]
                    if len(outstanding[i]) >= OUTSTANDING_PER_PUBLISHER:
                        continue
                    payload = f"k{i}-{seq[i]}".encode()
                    seq[i] += 1
                    info = pub.client.publish(self.topic, payload, qos=1)
                    with self._lock:
                        self.records.append((payload, info))
                    outstanding[i].append(info)
                    sent_any = True
                if not sent_any:
                    self._stop.wait(0.002)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "publisher driver did not stop"


def test_kill9_under_load_loses_nothing_acknowledged(make_broker, backend):
    """50 clients publish QoS 1 with ack: persisted; SIGKILL mid-stream; every PUBACKed message is a row."""
    b = storage_broker(make_broker, backend, ack="persisted")
    topic = unique("load")
    pubs: list[PahoClient] = []
    driver = None
    try:
        for i in range(KILL_PUBLISHERS):
            pubs.append(PahoClient(b.port, client_id=f"{topic}-c{i}").start())
        driver = LoadDriver(pubs, topic)
        t0 = time.monotonic()
        driver.start()
        wait_until(lambda: driver.acked() >= KILL_AFTER_ACKED or time.monotonic() - t0 > KILL_LOAD_MAX_SECONDS,
                   KILL_LOAD_MAX_SECONDS + 2, message="load before the kill")
        b.signal(signal.SIGKILL)
        elapsed = time.monotonic() - t0
        assert b.wait(5) is not None, "gateway still running after SIGKILL"
        driver.stop()
        assert driver.error is None, f"publisher driver failed: {driver.error!r}"

        acked = [p for p, info in driver.records if acknowledged(info)]
        assert len(acked) > 100, f"only {len(acked)} messages acknowledged before the kill: too little load"
        rows = query(b, "SELECT client_id, payload, qos, topic FROM messages WHERE topic = ?", (topic,))
        stored = {bytes(r["payload"]) for r in rows}
        missing = [p for p in acked if p not in stored]
        print(f"kill -9 ({'postgres' if backend else 'sqlite'}): {len(driver.records)} published, {len(acked)} acknowledged, {len(rows)} rows, "
              f"in {elapsed:.2f}s ({len(acked) / elapsed:.0f} acked msg/s, {len(rows) / elapsed:.0f} rows/s); "
              f"acknowledged but missing: {len(missing)}")
        assert not missing, f"{len(missing)} acknowledged messages are not in the table, e.g. {missing[:5]}"
        assert len(rows) == len(stored), "duplicate rows"
        # Each row's client id is the publisher's.
        for r in rows[:200]:
            i = int(bytes(r["payload"]).split(b"-")[0][1:])
            assert r["client_id"] == f"{topic}-c{i}" and r["qos"] == 1
    finally:
        if driver is not None:
            driver.stop()
        stop_all(pubs)


# --------------------------------------------------------------------------------------
# Outages (the test holds an exclusive lock on the database)


def test_outage_backpressure_no_puback_while_locked_then_everything_stored(make_broker):
    """overflow: backpressure: while the database is locked, commits fail and are retried; QoS 1
    publishers get no PUBACK, other clients are still served; after the lock is released every message
    is acknowledged and stored, in order."""
    base = unique("bp")
    b = storage_broker(make_broker, topics=[f"{base}/data/#"], overflow="backpressure",
                       queue={"max_messages": 5})
    lock = DatabaseLock(b)
    pub = PahoClient(b.port, client_id=unique("bp-pub")).start()
    try:
        infos = [(f"m{i}".encode(), pub.publish(f"{base}/data/x", f"m{i}".encode(), qos=1, timeout=None))
                 for i in range(20)]
        # The gateway keeps serving: another client connects and gets a PUBACK on an unstored topic.
        with RawClient(b.port) as other:
            other.connect(unique("bp-other"))
            other.send(publish_packet(f"{base}/free", b"free", qos=1, packet_id=9))
            other.expect(bytes([PUBACK << 4, 2, 0, 9]), timeout=5, what="PUBACK on an unstored topic during the outage")
        # The commit fails once SQLite's busy timeout (5 s) passes; the gateway logs it and retries.
        wait_until(lambda: "telemetry store unavailable" in b.log_path.read_text(errors="replace"), 12,
                   message="the gateway to log the failed commit")
        acked_while_locked = [p for p, info in infos if acknowledged(info)]
        assert not acked_while_locked, f"PUBACK while the database was locked: {acked_while_locked}"
        assert b.alive()
        lock.release()
        t0 = time.monotonic()
        wait_until(lambda: all(acknowledged(info) for _, info in infos), 15,
                   message="every PUBACK after the lock was released")
        print(f"outage (backpressure): all 20 acknowledged {time.monotonic() - t0:.2f}s after the lock was released")
        assert stored_payloads(b, f"{base}/data/%") == [p for p, _ in infos]
        assert "telemetry store available again" in b.log_path.read_text(errors="replace")
    finally:
        lock.release()
        pub.stop()


def test_outage_reject_v5_gets_0x97_and_311_is_disconnected(make_broker):
    """overflow: reject with a 3-message queue: while the database is locked and the queue is full, an
    MQTT 5 publisher gets PUBACK 0x97 (Quota exceeded) and an MQTT 3.1.1 publisher is disconnected;
    nothing refused is stored, everything accepted is stored once the lock is released."""
    base = unique("rj")
    topic = f"{base}/data/x"
    b = storage_broker(make_broker, topics=[f"{base}/data/#"], overflow="reject", queue={"max_messages": 3})
    lock = DatabaseLock(b)
    filler = RawClient5(b.port)
    v5 = RawClient5(b.port)
    v311 = RawClient(b.port)
    try:
        filler.connect5(unique("rj-fill"))
        for i in range(1, 4):
            filler.send(publish5_packet(topic, f"fill{i}".encode(), qos=1, packet_id=i))
        # PINGRESP comes after the three PUBLISHes were handled (queued): the queue is now full.
        filler.send(PINGREQ_BYTES)
        p = filler.expect_packet(5, what="PINGRESP")
        assert p.raw == PINGRESP_BYTES, f"expected PINGRESP, got {p!r}"

        v5.connect5(unique("rj-v5"))
        v5.send(publish5_packet(topic, b"refused-v5", qos=1, packet_id=7))
        ack = v5.expect_packet(5, what="PUBACK 0x97")
        assert ack.type == PUBACK, f"expected PUBACK, got {ack!r}"
        assert parse_ack5(ack)[:2] == (7, 0x97), f"expected PUBACK 7 with 0x97, got {parse_ack5(ack)}"

        v311.connect(unique("rj-311"))
        v311.send(publish_packet(topic, b"refused-311", qos=1, packet_id=8))
        assert v311.closed_within(5), "MQTT 3.1.1 publisher not disconnected on a full queue"
        assert v311.pending == b"", f"3.1.1 publisher got bytes before the close: {v311.pending.hex(' ')}"

        lock.release()
        acks = [parse_ack5(filler.expect_packet(15, what=f"PUBACK {i} after the lock was released"))
                for i in range(1, 4)]
        assert [a[0] for a in acks] == [1, 2, 3]
        assert all(a[1] < 0x80 for a in acks), f"filler PUBACKs failed: {acks}"
        # Room again: the MQTT 5 publisher's next message is accepted and stored.
        v5.send(publish5_packet(topic, b"accepted-v5", qos=1, packet_id=8))
        ack = parse_ack5(v5.expect_packet(10, what="PUBACK after recovery"))
        assert ack[0] == 8 and ack[1] < 0x80, f"not accepted after recovery: {ack}"
        assert stored_payloads(b, f"{base}/data/%") == [b"fill1", b"fill2", b"fill3", b"accepted-v5"]
    finally:
        lock.release()
        for c in (filler, v5, v311):
            c.close()


# --------------------------------------------------------------------------------------
# ack: received, graceful shutdown


def test_ack_received_acks_before_commit_and_sigterm_flushes(make_broker, backend):
    """ack: received: PUBACKs do not wait for the commit (a 10 s batch delay, the most allowed, holds the rows
    back while all 200 PUBACKs arrive); SIGTERM flushes the queue: exit 0 and every row is there."""
    b = storage_broker(make_broker, backend, ack="received", batch={"max_delay": 10, "max_rows": 10000})
    topic = unique("recv")
    pub = PahoClient(b.port, client_id=unique("recv-pub")).start()
    try:
        t0 = time.monotonic()
        infos = [pub.client.publish(topic, f"r{i}".encode(), qos=1) for i in range(200)]
        wait_until(lambda: all(acknowledged(i) for i in infos), 10, message="200 PUBACKs")
        acked_in = time.monotonic() - t0
        rows_at_ack = len(query(b, "SELECT id FROM messages WHERE topic = ?", (topic,)))
        print(f"ack: received: 200 PUBACKs in {acked_in:.3f}s; rows committed by then: {rows_at_ack}")
        assert rows_at_ack < 200, "every row was committed before the last PUBACK: the acks may have waited"
    finally:
        pub.stop()
    b.signal(signal.SIGTERM)
    rc = b.wait(b.shutdown_timeout + 10)
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert stored_payloads(b, topic) == [f"r{i}".encode() for i in range(200)]


# --------------------------------------------------------------------------------------
# Configuration

BAD_STORAGE = [
    ("ack-maybe", {"ack": "maybe"}, "storage.ack"),
    ("pool-size-0", {"pool": {"size": 0}}, "storage.pool.size"),
    ("bad-filter", {"topics": ["a/#/b"]}, "storage.topics"),
    ("unknown-key", {"foo": 1}, "storage.foo"),
    ("postgres-without-database", {"backend": "postgres"}, "storage.postgres.database"),
    ("postgres-bad-tls", {"postgres": {"tls": "verify-full"}}, "storage.postgres.tls"),
    ("postgres-unknown-key", {"postgres": {"dsn": "postgres://x"}}, "storage.postgres.dsn"),
    ("postgres-missing-password-file", {"backend": "postgres", "postgres": {
        "database": "d", "password_file": "/nonexistent/iotgw-password"}}, "storage.postgres.password_file"),
]


@pytest.mark.parametrize("case", BAD_STORAGE, ids=[c[0] for c in BAD_STORAGE])
def test_check_config_rejects_bad_storage(tmp_path, case):
    _, storage, key = case
    config = deep_merge(DEFAULT_CONFIG, {"listeners": {"mqtt": {"port": free_port()}},
                                         "storage": {"data_dir": str(tmp_path / "data"), **storage}})
    path = tmp_path / "bad-storage.json"
    path.write_text(json.dumps(config, indent=2))
    r = subprocess.run([str(IOTGW_BIN), "check-config", str(path)], capture_output=True, text=True, timeout=15)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"accepted storage {storage}: {out}"
    assert key in out, f"error does not name {key!r}: {out!r}"
    assert path.name in out, f"error does not name the file: {out!r}"


def test_check_config_accepts_full_storage_section(tmp_path):
    config = deep_merge(DEFAULT_CONFIG, {"listeners": {"mqtt": {"port": free_port()}}, "storage": {
        "enabled": True, "backend": "sqlite", "data_dir": str(tmp_path / "data"),
        "sqlite": {"file": "t.db", "synchronous": "normal"}, "pool": {"size": 2, "acquire_timeout": 1.5},
        "topics": ["a/#", "b/+/c"], "ack": "received", "overflow": "reject",
        "queue": {"max_messages": 100, "max_bytes": 65536}, "batch": {"max_rows": 50, "max_delay": 0.05}}})
    path = tmp_path / "good-storage.json"
    path.write_text(json.dumps(config, indent=2))
    r = subprocess.run([str(IOTGW_BIN), "check-config", str(path)], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr
