#!/usr/bin/env python3
"""Ingestion at the storage engine's speed: how many rows a second the gateway commits with the default
configuration (every topic stored, `ack: persisted`), driven by `iotgw simulate` (libmosquitto, C), and the
engine alone (the same table and index, WAL, synchronous=FULL, rows inserted straight into SQLite in
transactions of 2,000 and of 500 rows by a C loop, Benchmarks/engine/sqlite_engine.c: one prepared INSERT,
binds pointing at the row's bytes) as the limit beside it.

The gateway runs the embedded SQLite default in a fresh temporary directory (or, with --postgres URL, a
fresh database on that server). The rate is read from the gateway's own counter
`iotgw_ingest_committed_total`, sampled after a 2 s warm-up and at the end of publishing, so a backlog still
waiting in TCP buffers does not count. For QoS 1 the simulator's acknowledged count is checked against the
rows after the gateway is killed with SIGKILL: with `ack: persisted` every acknowledged message must be there.
With --postgres the gateway's sessions on the server (pg_stat_activity, application_name `iotgw`) are sampled
every 50 ms while it runs, and the peak is reported beside `storage.pool.size`.

Usage: ingest_rate.py --iotgw BIN [--qos 0|1] [--devices 10] [--seconds 10] [--postgres URL] [--json]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import free_port, report  # noqa: E402


def metric(admin_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total


def histogram_quantile(admin_port: int, name: str, q: float) -> float | None:
    """The q-quantile of a Prometheus histogram, interpolated inside its bucket (seconds)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
    buckets = []
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket\{{.*le="([^"]+)".*\}} ([0-9.e+-]+)$', line)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if le == float("inf"):
                return prev_le
            frac = (target - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_count = le, count
    return None


def start_gateway(binary: str, workdir: str, postgres: str | None, batch_rows: int | None) -> tuple[subprocess.Popen, int, int]:
    mqtt_port, admin_port = free_port(), free_port()
    if postgres:
        from urllib.parse import urlparse
        u = urlparse(postgres)
        storage = (f'"backend": "postgres", "postgres": {{"host": "{u.hostname}", "port": {u.port or 5432}, '
                   f'"user": "{u.username}", "password": "{u.password or ""}", "database": "{u.path.lstrip("/")}"}}')
    else:
        storage = f'"backend": "sqlite", "data_dir": "{workdir}/data"'
    if batch_rows:
        storage += f', "batch": {{"max_rows": {batch_rows}}}'
    config = os.path.join(workdir, "iotgw.json")
    with open(config, "w") as f:
        f.write(f'''{{"listeners": {{"mqtt": {{"port": {mqtt_port}}}, "ws": {{"enabled": false}}}},
  "admin": {{"port": {admin_port}}},
  "storage": {{{storage}}},
  "log": {{"level": "warning"}}}}''')
    proc = subprocess.Popen([binary, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "gateway.log"), "w"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1)
            return proc, mqtt_port, admin_port
        except Exception:
            if proc.poll() is not None:
                sys.exit(f"the gateway exited: see {workdir}/gateway.log")
            time.sleep(0.1)
    proc.kill()
    sys.exit("the gateway did not become ready")


def count_rows(workdir: str, postgres: str | None) -> int:
    if postgres:
        import psycopg2
        with psycopg2.connect(postgres) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM messages")
            return cur.fetchone()[0]
    db = os.path.join(workdir, "data", "iotgw.db")
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def admin_sql(url: str, *statements: str) -> None:
    """Runs statements outside a transaction (CREATE/DROP DATABASE refuse to run in one; psycopg2 2.9's
    `with connection:` opens one even in autocommit mode, so the connection is not used as a context)."""
    import psycopg2
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


class SessionSampler(threading.Thread):
    """The most server sessions the gateway holds at once (pg_stat_activity), sampled every 50 ms."""

    def __init__(self, url: str, database: str) -> None:
        super().__init__(daemon=True)
        self.url, self.database = url, database
        self.peak, self.samples = 0, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg2
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.stopping.wait(0.05):
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'iotgw'",
                                (self.database,))
                    self.peak = max(self.peak, cur.fetchone()[0])
                    self.samples += 1
        finally:
            conn.close()

    def stop(self) -> int:
        self.stopping.set()
        self.join(timeout=5)
        return self.peak


ENGINE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine", "sqlite_engine.c")


def build_engine(directory: str) -> str:
    """Compiles Benchmarks/engine/sqlite_engine.c (a C loop: one prepared INSERT, static binds) against the
    system's libsqlite3; returns the binary's path."""
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        sys.exit("--engine needs a C compiler (cc, clang or gcc) and libsqlite3-dev")
    binary = os.path.join(directory, "sqlite_engine")
    subprocess.run([compiler, "-O2", "-o", binary, ENGINE_SOURCE, "-lsqlite3"], check=True)
    return binary


def engine_alone(rows: int, batch: int) -> float:
    """Rows/s inserting the gateway's row shape straight into SQLite (WAL, synchronous=FULL), batches of `batch`,
    from C."""
    directory = tempfile.mkdtemp(prefix="iotgw-engine-")
    try:
        binary = build_engine(directory)
        out = subprocess.run([binary, os.path.join(directory, "engine.db"), str(rows), str(batch)],
                             check=True, capture_output=True, text=True, timeout=300).stdout
        return float(out.strip())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iotgw", required=True)
    parser.add_argument("--qos", type=int, default=0, choices=[0, 1])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rate", type=int, default=50000, help="offered msg/s per device (as fast as possible when high)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--postgres", help="PostgreSQL URL instead of the embedded SQLite default")
    parser.add_argument("--engine", action="store_true", help="also measure the engine alone (SQLite)")
    parser.add_argument("--batch-max-rows", type=int, help="storage.batch.max_rows (default: the gateway's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="iotgw-ingest-")
    postgres = args.postgres
    sampler = None
    if postgres:
        import psycopg2
        name = f"iotgw_ingest_{os.getpid()}"
        admin_sql(postgres, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        postgres = re.sub(r"/[^/?]*(\?|$)", f"/{name}\\1", postgres, count=1) if "://" in postgres else postgres
        sampler = SessionSampler(args.postgres, name)
        sampler.start()
    proc, mqtt_port, admin_port = start_gateway(args.iotgw, workdir, postgres, args.batch_max_rows)
    try:
        sim = subprocess.Popen(
            [args.iotgw, "simulate", "--port", str(mqtt_port), "--mqtt-devices", str(args.devices), "--qos", str(args.qos),
             "--rate", str(args.rate), "--payload-size", "64", "--duration", f"{args.seconds}s", "--drain", "5s",
             "--consumers", "0", "--connect-rate", "0", "--loss-tolerance", "1", "--json", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # Wait for the first commits, then a 2 s warm-up.
        deadline = time.monotonic() + 30
        while metric(admin_port, "iotgw_ingest_committed_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)
        cpu0 = sum(os.times()[2:4])
        t0, c0 = time.monotonic(), metric(admin_port, "iotgw_ingest_committed_total")
        stat0 = open(f"/proc/{proc.pid}/stat").read().split()
        window = max(1, args.seconds - 4)
        time.sleep(window)
        t1, c1 = time.monotonic(), metric(admin_port, "iotgw_ingest_committed_total")
        stat1 = open(f"/proc/{proc.pid}/stat").read().split()
        ticks = os.sysconf("SC_CLK_TCK")
        gateway_cpu = (int(stat1[13]) + int(stat1[14]) - int(stat0[13]) - int(stat0[14])) / ticks
        p99 = histogram_quantile(admin_port, "iotgw_ingest_commit_seconds", 0.99)
        p50 = histogram_quantile(admin_port, "iotgw_ingest_commit_seconds", 0.50)
        out, _ = sim.communicate(timeout=args.seconds + 120)
        del cpu0
        result = {
            "backend": "postgres" if postgres else "sqlite",
            "qos": args.qos,
            "devices": args.devices,
            "committed_rows_per_s": round((c1 - c0) / (t1 - t0)),
            "gateway_cpu_s_per_s": round(gateway_cpu / (t1 - t0), 2),
            "commit_p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "commit_p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }
        import json
        try:
            sim_report = json.loads(out)
        except Exception:
            sim_report = {}
        if args.qos == 1:
            # kill -9: every acknowledged message must be a row.
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            rows = count_rows(workdir, postgres)
            acked = sim_report.get("messages", {}).get("acknowledged")
            result["acknowledged"] = acked
            result["rows_after_kill9"] = rows
            result["acknowledged_missing"] = None if acked is None else max(0, acked - rows)
        if sampler:
            result["peak_server_sessions"] = sampler.stop()
            result["pool_size"] = 4  # storage.pool.size: the default, which this script does not change
        if args.engine and not postgres:
            # The same batch sizes the gateway uses at most (storage.batch.max_rows 2000) and the old default.
            result["engine_alone_rows_per_s_batch_2000"] = round(engine_alone(200_000, 2000))
            result["engine_alone_rows_per_s_batch_500"] = round(engine_alone(100_000, 500))
        report(result, args.json)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if sampler:
            sampler.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if postgres:
            admin_sql(args.postgres, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
