"""(issue 5) The PostgreSQL backend end to end: start-up without a server, and a server outage under load.

The backend-neutral storage tests (ack: persisted rows, kill -9 under load, ...) run on PostgreSQL in
test_storage.py (its ``backend`` fixture). Here: what only a server that can go away has. iotgw only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from conftest import DEFAULT_CONFIG, IOTGW_BIN, deep_merge
from helpers import PahoClient, free_port, is_mosquitto, stop_all, unique, wait_until
from operations_helpers import get
from test_storage import LoadDriver, acknowledged, storage_broker

pytestmark = pytest.mark.skipif(is_mosquitto(), reason="iotgw only: the PostgreSQL storage backend")

OUTAGE_PUBLISHERS = 10
OUTAGE_SECONDS = 10.0


def storage_state(broker, component: str = "storage") -> tuple[int, str | None]:
    """(/readyz status, the state of one component: `storage` (commits) or `database` (the probe))."""
    r = get(broker.admin_port, "/readyz")
    components = {c["name"]: c for c in r.json()["components"]}
    return r.status, components.get(component, {}).get("state")


def test_unreachable_postgres_refuses_to_start(make_broker, tmp_path):
    """Nothing listens at storage.postgres host:port: the gateway keeps trying for connect_timeout, then
    exits 1 with an error naming host:port, and never listens (nothing could be acknowledged durably)."""
    port = free_port()
    b = make_broker(start=False, config_format="json", storage={
        "backend": "postgres",
        "postgres": {"host": "127.0.0.1", "port": port, "database": "iotgw", "password": "x", "connect_timeout": 2}})
    t0 = time.monotonic()
    r = subprocess.run(b.argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    elapsed = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"exit {r.returncode}: {out[-2000:]}"
    assert f"127.0.0.1:{port}" in out, f"the error does not name host:port: {out[-2000:]}"
    assert "connect_timeout" in out, out[-2000:]
    assert 2 <= elapsed < 15, f"gave up after {elapsed:.1f}s (connect_timeout 2 s)"


def test_wrong_password_refuses_to_start_at_once(make_broker, postgres_db, tmp_path):
    """The server answers but refuses the login: no retrying, exit 1 with the server's reason."""
    b = make_broker(start=False, config_format="json",
                    storage=postgres_db.storage_config(password="wrong-password", connect_timeout=20))
    t0 = time.monotonic()
    r = subprocess.run(b.argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"exit {r.returncode}: {out[-2000:]}"
    assert "28P01" in out or "password authentication failed" in out, out[-2000:]
    assert time.monotonic() - t0 < 10, "an authentication failure was retried until connect_timeout"


def test_password_file(make_broker, postgres_db, tmp_path):
    """storage.postgres.password_file: the password is its first line."""
    secret = tmp_path / "pg-password"
    secret.write_text(postgres_db.server.password + "\n")
    config = postgres_db.storage_config(password_file=str(secret))
    config["postgres"].pop("password")
    b = storage_broker(make_broker, None, **config)
    pub = PahoClient(b.port, client_id=unique("pwfile")).start()
    try:
        topic = unique("pwfile")
        pub.publish(topic, b"via-password-file", qos=1)
        rows = postgres_db.query("SELECT payload FROM messages WHERE topic = ?", (topic,))
        assert [bytes(r["payload"]) for r in rows] == [b"via-password-file"]
    finally:
        pub.stop()


def test_check_config_accepts_postgres_section(tmp_path):
    config = deep_merge(DEFAULT_CONFIG, {"listeners": {"mqtt": {"port": free_port()}}, "storage": {
        "backend": "postgres", "postgres": {"host": "db.example", "port": 5433, "user": "gw", "password": "p",
                                            "database": "telemetry", "tls": "require", "connect_timeout": 3}}})
    path = tmp_path / "pg.json"
    path.write_text(json.dumps(config, indent=2))
    r = subprocess.run([str(IOTGW_BIN), "check-config", str(path)], capture_output=True, text=True, timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr


def test_outage_postgres_stopped_10s_nothing_acknowledged_is_lost(make_broker, private_postgres):
    """A gateway on its own PostgreSQL; 10 publishers send QoS 1 with ack: persisted. The server is stopped
    (pg_ctl stop -m fast) for 10 s: the gateway keeps running, PUBACKs stop, /readyz reports storage not
    ready; after the server is back, /readyz is ready again, publishing resumes, and every PUBACKed
    message is in the table."""
    db = private_postgres
    b = make_broker(config_format="json", admin={"enabled": True}, storage={**db.storage_config(), "ack": "persisted"})
    topic = unique("outage")
    pubs: list[PahoClient] = []
    driver = None
    try:
        for i in range(OUTAGE_PUBLISHERS):
            pubs.append(PahoClient(b.port, client_id=f"{topic}-c{i}").start())
        assert storage_state(b) == (200, "ready")
        driver = LoadDriver(pubs, topic)
        driver.start()
        wait_until(lambda: driver.acked() >= 300, 20, message="300 PUBACKs before the outage")

        db.server.stop()
        stopped_at = time.monotonic()
        acked_at_stop = driver.acked()
        r = wait_until(lambda: (lambda s: s if s[0] == 503 and s[1] == "not_ready" else None)(storage_state(b)),
                       OUTAGE_SECONDS, interval=0.1, message="/readyz 503 with storage not ready")
        not_ready_after = time.monotonic() - stopped_at
        # PUBACKs of batches committed just before the stop may still be on their way for a moment (the
        # machine may be loaded); from 5 s after the stop nothing can be acknowledged until it is back.
        time.sleep(max(0.0, 5.0 - (time.monotonic() - stopped_at)))
        acked_early = driver.acked()
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
        acked_late = driver.acked()
        assert b.alive(), "the gateway died during the outage"
        assert acked_late == acked_early, (f"{acked_late - acked_early} PUBACKs 5-10 s into the outage "
                                           f"({acked_at_stop} at the stop, {acked_early} at 5 s)")
        assert storage_state(b)[0] == 503

        db.server.start()
        started_at = time.monotonic()
        wait_until(lambda: storage_state(b) == (200, "ready"), 30, interval=0.1, message="/readyz ready again")
        ready_after = time.monotonic() - started_at
        wait_until(lambda: driver.acked() >= acked_late + 300, 30, message="300 more PUBACKs after the restart")
        resumed_after = time.monotonic() - started_at
        driver.stop()
        assert driver.error is None, f"publisher driver failed: {driver.error!r}"
        # The last publishes are acknowledged once committed.
        wait_until(lambda: all(acknowledged(info) for _, info in driver.records[-50:]), 15,
                   message="the last PUBACKs")

        acked = [p for p, info in driver.records if acknowledged(info)]
        rows = db.query("SELECT payload FROM messages WHERE topic = ?", (topic,))
        stored = [bytes(r["payload"]) for r in rows]
        missing = set(acked) - set(stored)
        print(f"outage: {len(driver.records)} published, {len(acked)} acknowledged ({acked_at_stop} before the stop), "
              f"{len(stored)} rows ({len(stored) - len(set(stored))} duplicates); storage not ready "
              f"{not_ready_after:.1f}s after the stop, ready {ready_after:.1f}s and 300 more PUBACKs "
              f"{resumed_after:.1f}s after the restart; acknowledged but missing: {len(missing)}")
        assert not missing, f"{len(missing)} acknowledged messages are not in the table, e.g. {sorted(missing)[:5]}"
        assert b.alive()
        assert "telemetry store available again" in b.log_path.read_text(errors="replace")
    finally:
        if driver is not None:
            driver.stop()
        stop_all(pubs)
    b.signal(signal.SIGTERM)
    assert b.wait(b.shutdown_timeout + 10) == 0, "exit status after SIGTERM"


def test_idle_gateway_reports_an_outage(make_broker, private_postgres):
    """No traffic at all, so no commit fails: the database probe alone turns /readyz 503 (component
    `database`) within seconds of the server stopping, and ready again once it is back."""
    db = private_postgres
    b = make_broker(config_format="json", admin={"enabled": True}, storage=db.storage_config())
    assert storage_state(b, "database") == (200, "ready")
    db.server.stop()
    stopped_at = time.monotonic()
    wait_until(lambda: storage_state(b, "database") == (503, "not_ready"), 20, interval=0.1,
               message="/readyz 503 with the database not ready")
    down_after = time.monotonic() - stopped_at
    assert storage_state(b)[1] == "ready", "no commit failed: the ingest component stays ready"
    db.server.start()
    started_at = time.monotonic()
    wait_until(lambda: storage_state(b, "database") == (200, "ready"), 30, interval=0.1, message="/readyz ready again")
    print(f"idle outage: not ready {down_after:.1f}s after the stop, ready {time.monotonic() - started_at:.1f}s after the start")
    assert b.alive()
    b.signal(signal.SIGTERM)
    assert b.wait(b.shutdown_timeout + 10) == 0
