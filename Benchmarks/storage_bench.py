#!/usr/bin/env python3
"""Persisted QoS 1 throughput into SQLite and PostgreSQL: how many PUBACKed messages per second the gateway
commits, with `ack: persisted` and `ack: received`.

For each (backend, ack) case: start the gateway (--iotgw BIN) on a free loopback port with a fresh database
(SQLite in a temporary directory; PostgreSQL: a fresh database on the server of IOTGW_TEST_POSTGRES_URL),
run --processes publisher processes of --clients paho-mqtt clients each, every client keeping --window QoS 1
messages in flight, for --seconds after a one-second warm-up; count PUBACKs in the measured window, then
stop the publishers, let the last PUBACKs arrive, SIGTERM the gateway (it flushes its queue) and count the
rows. On PostgreSQL, pg_stat_activity is sampled every 50 ms for the gateway's sessions
(application_name iotgw) and the peak reported; the commit latency p50/p99 comes from the gateway's
`iotgw_ingest_commit_seconds` histogram (interpolated inside its buckets).

Needs paho-mqtt 2.x and psycopg2 (make test installs both). Loopback only; stops everything it started.

Usage: storage_bench.py --iotgw .build/debug/iotgw [--seconds 10] [--processes 4] [--clients 10] [--window 16]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from urllib.parse import urlparse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publisher(port: int, clients: int, window: int, topic: str, start_at: float, measure_from: float,
              stop_at: float, out: mp.Queue) -> None:
    import paho.mqtt.client as mqtt

    lock = threading.Lock()
    acked_in_window = [0]
    outstanding = [0] * clients
    cs = []

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            outstanding[userdata] -= 1
            if measure_from <= time.monotonic() < stop_at:
                acked_in_window[0] += 1

    for i in range(clients):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{topic}-{os.getpid()}-{i}", userdata=i)
        c.max_inflight_messages_set(window)
        c.max_queued_messages_set(0)
        c.on_publish = on_publish
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        cs.append(c)
    while time.monotonic() < start_at:
        time.sleep(0.01)
    sent = 0
    payload = b"x" * 64
    while time.monotonic() < stop_at:
        progressed = False
        for i, c in enumerate(cs):
            with lock:
                room = outstanding[i] < window
                if room:
                    outstanding[i] += 1
            if room:
                c.publish(topic, payload, qos=1)
                sent += 1
                progressed = True
        if not progressed:
            time.sleep(0.0005)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(o > 0 for o in outstanding):
        time.sleep(0.05)
    for c in cs:
        c.disconnect()
        c.loop_stop()
    out.put((sent, acked_in_window[0], sum(outstanding)))


def run_case(args, backend: str, ack: str) -> dict:
    work = tempfile.mkdtemp(prefix="iotgw-storage-bench-")
    port = free_port()
    storage = {"ack": ack, "data_dir": os.path.join(work, "data"), "topics": ["bench/#"]}
    pg = None
    dbname = None
    if backend == "postgres":
        import psycopg2
        u = urlparse(os.environ["IOTGW_TEST_POSTGRES_URL"])
        pg = dict(host=u.hostname, port=u.port or 5432, user=u.username, password=u.password or "")
        dbname = "iotgw_bench_" + uuid.uuid4().hex[:12]
        admin = psycopg2.connect(dbname=(u.path or "/").lstrip("/"), **pg)
        admin.autocommit = True
        admin.cursor().execute(f"CREATE DATABASE {dbname}")
        storage.update({"backend": "postgres", "postgres": {**pg, "database": dbname}})
    admin_port = free_port()
    config = {"log": {"level": "warning"}, "listeners": {"mqtt": {"host": "127.0.0.1", "port": port},
                                                         "ws": {"enabled": False}}, "storage": storage,
              "admin": {"enabled": True, "host": "127.0.0.1", "port": admin_port}}
    config_path = os.path.join(work, "bench.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    log = open(os.path.join(work, "gateway.log"), "wb")
    proc = subprocess.Popen([args.iotgw, "run", "--config", config_path], stdout=log, stderr=subprocess.STDOUT)
    peak = [0]
    sampling = threading.Event()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gateway did not start: see {work}/gateway.log")
                time.sleep(0.05)

        def sample():
            import psycopg2
            con = psycopg2.connect(dbname=dbname, application_name="iotgw-bench", **pg)
            con.autocommit = True
            cur = con.cursor()
            while not sampling.is_set():
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'iotgw'")
                peak[0] = max(peak[0], cur.fetchone()[0])
                time.sleep(0.05)
            con.close()

        sampler = threading.Thread(target=sample, daemon=True) if pg else None
        if sampler:
            sampler.start()
        topic = f"bench/{backend}-{ack}"
        now = time.monotonic()
        start_at, measure_from = now + 2.0, now + 3.0
        stop_at = measure_from + args.seconds
        out: mp.Queue = mp.Queue()
        procs = [mp.Process(target=publisher, args=(port, args.clients, args.window, topic, start_at, measure_from,
                                                    stop_at, out)) for _ in range(args.processes)]
        for p in procs:
            p.start()
        results = [out.get(timeout=args.seconds + 60) for _ in procs]
        for p in procs:
            p.join(10)
        sampling.set()
        if sampler:
            sampler.join(5)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
        commit_p50 = histogram_quantile(metrics, "iotgw_ingest_commit_seconds", 0.5)
        commit_p99 = histogram_quantile(metrics, "iotgw_ingest_commit_seconds", 0.99)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        sent = sum(r[0] for r in results)
        acked = sum(r[1] for r in results)
        unacked = sum(r[2] for r in results)
        if pg:
            import psycopg2
            con = psycopg2.connect(dbname=dbname, **pg)
            rows = con.cursor()
            rows.execute("SELECT count(*) FROM messages")
            nrows = rows.fetchone()[0]
            con.close()
        else:
            con = sqlite3.connect(os.path.join(work, "data", "iotgw.db"))
            nrows = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            con.close()
        return {"backend": backend, "ack": ack, "msg_per_s": acked / args.seconds, "sent": sent, "rows": nrows,
                "unacked_at_end": unacked, "exit": rc, "peak_pg_sessions": peak[0] if pg else None,
                "commit_p50_ms": (commit_p50 or 0) * 1000, "commit_p99_ms": (commit_p99 or 0) * 1000}
    finally:
        sampling.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
        if pg:
            import psycopg2
            admin = psycopg2.connect(dbname=(urlparse(os.environ["IOTGW_TEST_POSTGRES_URL"]).path or "/").lstrip("/"), **pg)
            admin.autocommit = True
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            admin.close()
        shutil.rmtree(work, ignore_errors=True)


def histogram_quantile(metrics_text: str, name: str, q: float) -> float | None:
    """The q-quantile of a Prometheus histogram, interpolated linearly inside the bucket that holds it
    (as coarse as the buckets)."""
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1)
        lower_bound, lower_count = bound, count
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iotgw", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--only", default="", help="comma-separated backend:ack cases, e.g. postgres:persisted")
    args = parser.parse_args()
    cases = [(b, a) for a in ("persisted", "received") for b in ("sqlite", "postgres")]
    if args.only:
        cases = [tuple(c.split(":")) for c in args.only.split(",")]
    if any(b == "postgres" for b, _ in cases) and not os.environ.get("IOTGW_TEST_POSTGRES_URL"):
        sys.exit("set IOTGW_TEST_POSTGRES_URL (Tests/Support/postgres.sh start DIR prints it)")
    print(f"{args.processes} processes x {args.clients} paho clients, {args.window} QoS 1 in flight each, "
          f"{args.seconds:.0f} s measured; gateway {args.iotgw}")
    for backend, ack in cases:
        r = run_case(args, backend, ack)
        print(f"{backend:8} ack: {ack:9} {r['msg_per_s']:8.0f} PUBACKed msg/s; {r['sent']} sent, {r['rows']} rows "
              f"after SIGTERM (exit {r['exit']}), {r['unacked_at_end']} unacknowledged at the end; "
              f"commit p50/p99 {r['commit_p50_ms']:.1f}/{r['commit_p99_ms']:.1f} ms"
              + (f"; peak pg_stat_activity sessions: {r['peak_pg_sessions']}" if r["peak_pg_sessions"] is not None else ""),
              flush=True)


if __name__ == "__main__":
    main()
