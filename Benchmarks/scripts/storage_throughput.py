#!/usr/bin/env python3
"""Storage benchmark: QoS 1 messages persisted per second through the ingest queue and the pool.

Starts the gateway itself with a generated JSON config (MQTT on a free loopback port, admin listener for
/metrics, `storage` from --storage-json merged over SQLite in a temporary directory), drives it with
`iotgw simulate` (libmosquitto publishers, QoS 1, no consumers) at an offered rate above what storage can
take, and reports:

* acknowledged: PUBACKs the publishers received, per second of publishing (with `ack: persisted` every
  one of them is a committed row);
* rows: rows in `messages` after a graceful stop (SIGTERM flushes the ingest queue);
* commit p50/p99: from the `iotgw_ingest_commit_seconds` histogram (linear interpolation inside the
  bucket that holds the quantile — as coarse as the buckets);
* peak database connections: for SQLite the most descriptors the gateway held open on the database
  file, sampled every 50 ms; for PostgreSQL the most `pg_stat_activity` rows of the gateway's
  application name, sampled every 50 ms through psql (--pg-psql).

Usage: storage_throughput.py --iotgw BIN [--publishers 50] [--rate 50000] [--duration 20]
                             [--ack persisted|received] [--storage-json '{...}'] [--pg-psql 'psql args'] [--json]
Loopback only; every process started is stopped before the script returns.
"""
import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import sqlite3
from benchutil import free_port, report



def wait_listening(port, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not start listening")


def histogram_quantile(metrics_text, name, q):
    buckets = []
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1)
        lower_bound, lower_count = bound, count
    return None


def merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iotgw", required=True)
    parser.add_argument("--publishers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=50000, help="offered msg/s across all publishers")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--ack", default="persisted")
    parser.add_argument("--storage-json", default="{}")
    parser.add_argument("--pg-psql", default="", help="psql arguments reaching the same database, for pg_stat_activity")
    parser.add_argument("--pg-application-name", default="iotgw")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="iotgw-storage-bench-") as workdir:
        port, admin = free_port(), free_port()
        storage = merge({"data_dir": os.path.join(workdir, "data"), "ack": args.ack}, json.loads(args.storage_json))
        config = {
            "log": {"level": "warning"},
            "listeners": {"mqtt": {"enabled": True, "host": "127.0.0.1", "port": port}, "ws": {"enabled": False}},
            "admin": {"enabled": True, "host": "127.0.0.1", "port": admin},
            "shutdown": {"timeout": 60},
            "storage": storage,
        }
        path = os.path.join(workdir, "gateway.json")
        with open(path, "w") as f:
            json.dump(config, f)
        gateway = subprocess.Popen([args.iotgw, "run", "--config", path])
        peak = {"connections": 0}
        stop = threading.Event()
        database_file = os.path.realpath(os.path.join(storage["data_dir"], storage.get("sqlite", {}).get("file", "iotgw.db")))

        def sample():
            while not stop.is_set():
                try:
                    if storage.get("backend", "sqlite") == "sqlite":
                        fds = os.listdir(f"/proc/{gateway.pid}/fd")
                        n = 0
                        for fd in fds:
                            try:
                                if os.readlink(f"/proc/{gateway.pid}/fd/{fd}") == database_file:
                                    n += 1
                            except OSError:
                                pass
                    else:
                        out = subprocess.run(
                            ["psql", *shlex.split(args.pg_psql), "-Atc",
                             f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{args.pg_application_name}'"],
                            capture_output=True, text=True, timeout=5).stdout.strip()
                        n = int(out or 0)
                    peak["connections"] = max(peak["connections"], n)
                except (OSError, ValueError, subprocess.SubprocessError):
                    pass
                stop.wait(0.05)

        try:
            wait_listening(port)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            simulate = subprocess.run(
                [args.iotgw, "simulate", "--port", str(port), "--mqtt-devices", str(args.publishers), "--qos", "1",
                 "--total-rate", str(args.rate), "--duration", f"{args.duration}s", "--payload-size", str(args.payload_size),
                 "--consumers", "0", "--json", "--quiet"],
                capture_output=True, text=True, timeout=args.duration + 120)
            simulated = json.loads(simulate.stdout)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()
            gateway.send_signal(signal.SIGTERM)
            status = gateway.wait(90)
            stop.set()
            sampler.join()
            rows = None
            if storage.get("backend", "sqlite") == "sqlite":
                con = sqlite3.connect(database_file)
                rows = con.execute("SELECT count(*) FROM messages").fetchone()[0]
                con.close()
            elif args.pg_psql:
                rows = int(subprocess.run(["psql", *shlex.split(args.pg_psql), "-Atc", "SELECT count(*) FROM messages"],
                                          capture_output=True, text=True, timeout=30).stdout.strip() or 0)
            messages = simulated["messages"]
            result = {
                "backend": storage.get("backend", "sqlite"),
                "ack": args.ack,
                "publishers": args.publishers,
                "offered_per_second": args.rate,
                "published": messages["published"],
                "acknowledged": messages["acknowledged"],
                "acknowledged_per_second": round(messages["acknowledged"] / messages["publishSeconds"]),
                "rows_after_stop": rows,
                "commit_p50_ms": round((histogram_quantile(metrics, "iotgw_ingest_commit_seconds", 0.5) or 0) * 1000, 2),
                "commit_p99_ms": round((histogram_quantile(metrics, "iotgw_ingest_commit_seconds", 0.99) or 0) * 1000, 2),
                "peak_database_connections": peak["connections"],
                "gateway_exit_status": status,
            }
        finally:
            stop.set()
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait()
    report(result, args.json)


if __name__ == "__main__":
    main()
