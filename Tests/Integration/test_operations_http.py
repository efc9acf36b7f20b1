"""(Operations) The admin HTTP listener: /healthz, /readyz, /metrics, /api/v1/clients, /api/v1/stats.

Each endpoint's status codes and bodies, with and without a bearer token; readiness turning 503 while
the gateway drains; the metrics text parsed by prometheus_client's parser.
"""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import time

import pytest

from helpers import (PINGREQ_BYTES, PINGRESP_BYTES, PUBLISH, iotgw_only, publish_packet, raw5_connected,
                     raw_connected, subscribe_packet, unique, wait_until)
from operations_helpers import get, http_request, metric_samples

ADMIN = {"enabled": True}
TOKEN = "t0ken-for-tests"


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("the admin HTTP listener is iotgw's")


def test_healthz_and_readyz(make_broker):
    b = make_broker(admin=ADMIN)
    r = get(b.admin_port, "/healthz")
    assert r.status == 200, r
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == "ok"
    assert len(body["event_loops"]) >= 1
    assert all(loop["responding"] and loop["lag_seconds"] >= 0 for loop in body["event_loops"])

    r = get(b.admin_port, "/readyz")
    assert r.status == 200, r
    body = r.json()
    assert body["status"] == "ready"
    assert {c["name"]: c["state"] for c in body["components"]} == {"listeners": "ready", "shutdown": "ready", "storage": "ready", "database": "ready", "disk": "ready"}


@pytest.mark.parametrize("loops", [1, 3])
def test_event_loops_setting_sizes_the_loop_group(make_broker, loops):
    """`listeners.event_loops` fixes how many event loops run the connections (3 on this 2-core machine
    shows it is the setting, not the core count); messages cross between loops or stay on one."""
    b = make_broker(admin=ADMIN, listeners={"event_loops": loops})
    r = get(b.admin_port, "/healthz")
    assert r.status == 200, r
    assert [loop["index"] for loop in r.json()["event_loops"]] == list(range(loops))
    topic = unique("loops")
    # Four clients: with round-robin placement some pairs share a loop and some do not (when loops > 1).
    with raw_connected(b.port) as sub, raw_connected(b.port) as p1, raw_connected(b.port) as p2, \
            raw_connected(b.port) as p3:
        sub.subscribe(1, [(topic, 1)])
        for n, pub in enumerate((p1, p2, p3), start=1):
            pub.send(publish_packet(topic, f"m{n}".encode(), qos=1, packet_id=n))
            pub.expect(bytes([0x40, 0x02, 0x00, n]), what="PUBACK")
            p = sub.expect_packet(what="PUBLISH")
            got_topic, pid, payload = p.publish_fields()
            assert (got_topic, payload) == (topic, f"m{n}".encode())
            sub.send(bytes([0x40, 0x02]) + pid.to_bytes(2, "big"))


def test_unknown_paths_and_methods(make_broker):
    b = make_broker(admin=ADMIN)
    r = get(b.admin_port, "/nope")
    assert r.status == 404 and "error" in r.json()
    r = http_request(b.admin_port, "POST", "/healthz")
    assert r.status == 405 and r.headers["allow"] == "GET"
    r = http_request(b.admin_port, "GET", "/api/v1/clients/someone")
    assert r.status == 405 and r.headers["allow"] == "DELETE"


def test_metrics_parse_and_count(make_broker):
    b = make_broker(admin=ADMIN)
    topic = unique("metrics")
    with raw_connected(b.port) as sub, raw_connected(b.port) as pub:
        sub.subscribe(1, [(topic, 1)])
        for i in range(5):
            pub.send(publish_packet(topic, b"x" * 10, qos=1, packet_id=i + 1))
            pub.expect(bytes([0x40, 0x02, 0x00, i + 1]), what="PUBACK")
        for _ in range(5):
            p = sub.expect_packet(what="PUBLISH")
            assert p.type == PUBLISH
            _, pid, _ = p.publish_fields()
            sub.send(bytes([0x40, 0x02]) + pid.to_bytes(2, "big"))

        def scraped():
            r = get(b.admin_port, "/metrics")
            assert r.status == 200, r
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = metric_samples(r.body.decode())
            # Housekeeping samples the process gauges within a second of start.
            return samples if ("process_resident_memory_bytes", ()) in samples else None

        samples = wait_until(scraped, 10, interval=0.2, message="process gauges in /metrics")
        assert samples[("iotgw_connections", (("transport", "tcp"),))] == 2
        assert samples[("iotgw_messages_received_total", (("qos", "1"),))] >= 5
        assert samples[("iotgw_messages_sent_total", (("qos", "1"),))] >= 5
        assert samples[("iotgw_connects_total", ())] >= 2
        assert samples[("process_resident_memory_bytes", ())] > 1_000_000
        assert samples[("process_open_fds", ())] >= 4
        assert samples[("process_max_fds", ())] >= 1024
        assert samples[("iotgw_log_lines_dropped_total", ())] >= 0
        lags = [v for (name, _), v in samples.items() if name == "iotgw_event_loop_lag_seconds"]
        assert lags and all(0 <= v < 1 for v in lags)


def test_stats(make_broker):
    b = make_broker(admin=ADMIN)
    topic = unique("stats")
    with raw_connected(b.port) as sub, raw_connected(b.port) as pub:
        sub.subscribe(1, [(topic, 0), (topic + "/#", 0)])
        pub.send(publish_packet(topic, b"retained", qos=0, retain=True))
        sub.expect_packet(what="PUBLISH")
        r = get(b.admin_port, "/api/v1/stats")
        assert r.status == 200, r
        s = r.json()
        assert s["connections"]["by_transport"]["tcp"] == 2
        assert s["connections"]["total"] == 2
        assert s["clients_connected"] == 2
        assert s["sessions"] == 2
        assert s["subscriptions"] == 2
        assert s["retained_messages"] >= 1
        assert s["queued"] == {"messages": 0, "bytes": 0}
        assert s["totals"]["messages_received"] >= 1 and s["totals"]["messages_sent"] >= 1
        assert s["uptime_seconds"] > 0 and s["draining"] is False


def test_clients_listing_prefix_and_pagination(make_broker):
    b = make_broker(admin=ADMIN)
    prefix = unique("dev")
    ids = [f"{prefix}-a-{i}" for i in range(3)] + [f"{prefix}-b-{i}" for i in range(2)]
    clients = [raw_connected(b.port, client_id=i) for i in ids]
    try:
        r = get(b.admin_port, f"/api/v1/clients?prefix={prefix}")
        assert r.status == 200, r
        body = r.json()
        assert body["total"] == 5 and body["next"] is None
        assert [c["client_id"] for c in body["clients"]] == sorted(ids)
        assert all(c["connected"] and not c["persistent"] and c["queued_messages"] == 0 for c in body["clients"])

        r = get(b.admin_port, f"/api/v1/clients?prefix={prefix}-a-&limit=2").json()
        assert r["total"] == 3 and [c["client_id"] for c in r["clients"]] == ids[:2] and r["next"] == ids[1]
        r = get(b.admin_port, f"/api/v1/clients?prefix={prefix}-a-&limit=2&after={r['next']}").json()
        assert [c["client_id"] for c in r["clients"]] == ids[2:3] and r["next"] is None

        for bad in ("0", "abc", "1001", "-1"):
            r = get(b.admin_port, f"/api/v1/clients?limit={bad}")
            assert r.status == 400, (bad, r)
    finally:
        for c in clients:
            c.close()


def test_delete_client_disconnects_with_0x98(make_broker):
    b = make_broker(admin=ADMIN)
    client_id = unique("kick me")  # a space: the path is percent-encoded
    c5 = raw5_connected(b.port, client_id=client_id)
    try:
        r = http_request(b.admin_port, "DELETE", "/api/v1/clients/" + client_id.replace(" ", "%20"))
        assert r.status == 200, r
        assert r.json() == {"client_id": client_id, "disconnected": True}
        reason, _ = c5.expect_disconnect(what="after DELETE /api/v1/clients/{id}")
        assert reason == 0x98, f"DISCONNECT reason 0x{reason:02x}, expected 0x98 (administrative action)"
        wait_until(lambda: get(b.admin_port, "/api/v1/stats").json()["connections"]["total"] == 0, 5,
                   message="the connection to be gone")
        r = http_request(b.admin_port, "DELETE", "/api/v1/clients/" + client_id.replace(" ", "%20"))
        assert r.status == 404, r
    finally:
        c5.close()


def test_bearer_token(make_broker):
    b = make_broker(admin={"enabled": True, "token": TOKEN})
    # Probes stay open.
    assert get(b.admin_port, "/healthz").status == 200
    assert get(b.admin_port, "/readyz").status == 200
    for path in ("/metrics", "/api/v1/stats", "/api/v1/clients"):
        r = get(b.admin_port, path)
        assert r.status == 401, (path, r)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert get(b.admin_port, path, token="wrong").status == 401
        assert get(b.admin_port, path, token=TOKEN + "x").status == 401
        assert get(b.admin_port, path, token=TOKEN).status == 200, path
    assert http_request(b.admin_port, "DELETE", "/api/v1/clients/x").status == 401
    assert http_request(b.admin_port, "DELETE", "/api/v1/clients/x", token=TOKEN).status == 404


def test_readiness_turns_503_while_draining(make_broker):
    """SIGTERM with a subscriber that never acknowledges: the drain waits, and meanwhile /readyz is 503
    (shutdown: draining) while /healthz stays 200; then the gateway exits 0."""
    b = make_broker(admin=ADMIN, shutdown={"timeout": 8})
    topic = unique("drain")
    sub = raw_connected(b.port)
    pub = raw_connected(b.port)
    try:
        sub.subscribe(1, [(topic, 1)])
        pub.send(publish_packet(topic, b"unacked", qos=1, packet_id=1))
        pub.expect(bytes([0x40, 0x02, 0x00, 0x01]), what="PUBACK")
        assert sub.expect_packet(what="PUBLISH").type == PUBLISH  # and never PUBACK it
        assert get(b.admin_port, "/readyz").status == 200
        t0 = time.monotonic()
        b.signal(signal.SIGTERM)

        def draining():
            r = get(b.admin_port, "/readyz")
            return r if r.status == 503 else None

        r = wait_until(draining, 6, interval=0.05, message="/readyz 503 after SIGTERM")
        body = r.json()
        assert body["status"] == "not_ready"
        assert {"name": "shutdown", "state": "not_ready", "reason": "draining"} in body["components"]
        assert get(b.admin_port, "/healthz").status == 200
        assert get(b.admin_port, "/api/v1/stats").json()["draining"] is True
        rc = b.wait(15)
        elapsed = time.monotonic() - t0
        assert rc == 0, f"exit status {rc}"
        # Exit 0 means the graceful path finished (a forced exit is status 3); the bound leaves room
        # for a loaded machine.
        assert elapsed < 8 + 3, f"exit took {elapsed:.2f}s with shutdown.timeout 8"
    finally:
        sub.close()
        pub.close()


def test_json_log_format(make_broker):
    b = make_broker(log={"level": "info", "format": "json"})
    with raw_connected(b.port) as c:
        c.send(PINGREQ_BYTES)
        c.expect(PINGRESP_BYTES)
    b.signal(signal.SIGTERM)
    assert b.wait(10) == 0
    lines = [line for line in b.log_path.read_text().splitlines() if line.strip()]
    assert lines, "no log output"
    entries = [json.loads(line) for line in lines]
    assert all({"ts", "level", "label", "message"} <= e.keys() for e in entries)
    assert any(e["message"] == "listening" and e.get("iotgw.listener") == "mqtt" for e in entries)
    assert any(e["message"] == "iotgw stopped" for e in entries)


@pytest.mark.parametrize("storage", [False, True], ids=["storage-off", "storage-on"])
def test_admin_port_in_use_fails_start_with_status_1(make_broker, storage):
    """A listener that cannot bind ends the process with status 1, promptly (no service left waiting).
    With storage on, the failed start cancels every service at once, so the database may be closed
    while another service still holds a pooled connection: every connection is still closed (the debug
    build asserted that SQLite connections are closed, and crashed here with SIGILL)."""
    import socket
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for attempt in range(3):  # the failure may race the MQTT listener's READY; the exit must not hang
            b = make_broker(start=False, admin={"enabled": True, "port": port}, storage={"enabled": storage})
            b.admin_port = None  # nothing to wait for
            t0 = time.monotonic()
            try:
                b.start()
            except AssertionError:
                pass  # exited before the MQTT port accepted
            rc = b.wait(10)
            assert rc == 1, f"exit status {rc} (attempt {attempt})\n{b.log_tail()}"
            assert time.monotonic() - t0 < 10
            log = b.log_path.read_text()
            assert "Address already in use" in log
            assert "crashed" not in log and "Assertion failed" not in log, b.log_tail()


def test_admin_connections_over_the_limit_are_closed_and_the_gateway_lives_on(make_broker):
    """The admin listener serves at most 64 connections at once; the ones over that are closed at once.
    (Closing them without finishing their async channel made NIO trap: 65 idle admin connections
    crashed the gateway.)"""
    b = make_broker(admin=ADMIN)
    socks = [socket.create_connection(("127.0.0.1", b.admin_port), timeout=10) for _ in range(80)]
    try:
        def closed_by_gateway() -> int:
            readable, _, _ = select.select(socks, [], [], 0)
            return sum(1 for s in readable if s.recv(1, socket.MSG_PEEK) == b"")
        wait_until(lambda: closed_by_gateway() >= 16, 10, interval=0.1,
                   message="the 16 connections over the limit of 64 closed by the gateway")
        assert b.alive(), b.log_tail()
    finally:
        for s in socks:
            s.close()
    # Once the others are gone, the listener answers again. Until the gateway has seen them close, a new
    # connection may still be one over the limit and be closed at once: that is a retry, not a failure.
    def healthy():
        try:
            r = get(b.admin_port, "/healthz")
        except (OSError, http.client.HTTPException):
            return None
        return r if r.status == 200 else None

    r = wait_until(healthy, 10, interval=0.1, message="/healthz 200 after the crowd left")
    assert r.json()["status"] == "ok"
    b.signal(signal.SIGTERM)
    assert b.wait(b.shutdown_timeout + 10) == 0, b.log_tail()
    assert "Fatal error" not in b.log_path.read_text(errors="replace")
