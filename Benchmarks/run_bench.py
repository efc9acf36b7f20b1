#!/usr/bin/env python3
"""`make bench`: iotgw side by side with Debian's mosquitto, on this machine, through `iotgw simulate`.

For each standard scenario (Configs/scenarios/bench-*.yaml) and each of three rounds, the driver starts a fresh
broker on a free loopback port — iotgw (release build) and mosquitto, alternating which goes first — runs the
simulator against it, samples the broker's RSS (/proc/PID/status VmRSS) every 100 ms and its CPU time
(/proc/PID/stat utime+stime) around the run, then stops it. Every figure in BENCHMARKS.md is the median of the
rounds. The micro-benchmarks (Benchmarks/Package.swift, ordo-one/benchmark) are run by `make microbench`; their
markdown output is included when --micro FILE is given.

Both brokers get the same limits: 1000 queued messages and 1 MiB per client, 32 in flight, no connection cap,
and TCP_NODELAY (iotgw always sets it; mosquitto gets `set_tcp_nodelay true`). The latency scenario is also run
against mosquitto's default (Nagle on) and reported apart.

Loopback only. Python 3.11 standard library only. Every process started is stopped before the driver returns.

Usage: run_bench.py [--iotgw BIN] [--mosquitto BIN] [--rounds 3] [--only NAME,...] [--micro FILE] [--output FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "Configs" / "scenarios"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# Limits both brokers get (iotgw's defaults, mirrored in mosquitto.conf).
MAX_QUEUED_MESSAGES = 1000
MAX_QUEUED_BYTES = 1_048_576
MAX_INFLIGHT = 32

# libmosquitto opens three descriptors per client (the socket and a socket pair to wake its loop), and one process
# may open 20,000: at most this many devices per simulator process.
DEVICES_PER_SIMULATOR = 5000


# ---------------------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; always reaps."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime 14 and stime 15 (1-based) of the whole line.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def open_descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Sampler:
    """Samples a process's RSS every `interval` seconds on a thread, until stopped."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


@dataclass
class Broker:
    kind: str                # "iotgw" or "mosquitto"
    process: subprocess.Popen
    port: int
    directory: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def iotgw_config(port: int, extra: str = "", variant: str = "") -> str:
    """The gateway's benchmark configuration; `extra` (top-level YAML keys not used here) is appended, `variant`
    (`section.key: value`, the section `listeners` or `limits`) adds one setting to that section."""
    section, _, setting = variant.partition(".")
    assert not variant or section in ("listeners", "limits"), f"variant {variant!r}: not listeners.* or limits.*"

    def added(name: str) -> str:
        return f"  {setting}\n" if variant and section == name else ""

    return f"""# generated by Benchmarks/run_bench.py
log:
  level: warning
listeners:
  mqtt:
    host: 127.0.0.1
    port: {port}
  ws:
    enabled: false
{added("listeners")}limits:
  max_connections: 100000
  max_inflight: {MAX_INFLIGHT}
  max_queued_messages: {MAX_QUEUED_MESSAGES}
  max_queued_bytes: {MAX_QUEUED_BYTES}
{added("limits")}admin:
  enabled: false
# mosquitto runs with persistence off, so the comparison runs iotgw without telemetry storage too.
storage:
  enabled: false
""" + extra


def mosquitto_config(port: int, nodelay: bool) -> str:
    return f"""# generated by Benchmarks/run_bench.py
listener {port} 127.0.0.1
allow_anonymous true
max_connections -1
max_queued_messages {MAX_QUEUED_MESSAGES}
max_queued_bytes {MAX_QUEUED_BYTES}
max_inflight_messages {MAX_INFLIGHT}
set_tcp_nodelay {'true' if nodelay else 'false'}
persistence false
connection_messages false
log_dest stderr
log_type error
log_type warning
"""


def start_broker(kind: str, args: argparse.Namespace, nodelay: bool = True, iotgw_extra: str = "",
                 iotgw_variant: str = "") -> Broker:
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix=f"iotgw-bench-{kind}-"))
    if kind == "iotgw":
        config = directory / "iotgw.yaml"
        config.write_text(iotgw_config(port, iotgw_extra, iotgw_variant))
        command = [args.iotgw, "run", "--config", str(config)]
    else:
        config = directory / "mosquitto.conf"
        config.write_text(mosquitto_config(port, nodelay))
        command = [args.mosquitto, "-c", str(config)]
    log = open(directory / "broker.log", "wb")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while not port_accepts(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            output = (directory / "broker.log").read_text(errors="replace")[-2000:]
            shutil.rmtree(directory, ignore_errors=True)
            raise RuntimeError(f"{kind} did not start on port {port}:\n{output}")
        time.sleep(0.05)
    time.sleep(0.5)  # let the probe connection go and the process settle before the baseline
    return Broker(kind, process, port, directory, command)


# ---------------------------------------------------------------------------------------------------------------
# Simulator runs


def simulate_command(args: argparse.Namespace, scenario: str, port: int, extra: list[str] = ()) -> list[str]:
    return [args.simulator or args.iotgw, "simulate", "--scenario", str(SCENARIOS / f"{scenario}.yaml"),
            "--port", str(port), "--json", "--quiet", *extra]


def display(command: list[str]) -> str:
    """A command as it would be typed from the repository root (binary and scenario paths made relative, the
    broker's port as `PORT`)."""
    parts = []
    for part in command:
        try:
            part = str(Path(os.path.abspath(part)).relative_to(REPO)) if part.startswith("/") else part
        except (ValueError, OSError):
            pass
        parts.append(part)
    for index, part in enumerate(parts[:-1]):
        if part == "--port":
            parts[index + 1] = "PORT"
    return shlex.join(parts)


def run_simulators(commands: list[list[str]], timeout: float) -> list[dict]:
    """Runs simulator processes in parallel and returns their JSON reports (exit 1, losses over tolerance, is fine)."""
    processes = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for c in commands]
    reports = []
    deadline = time.monotonic() + timeout
    try:
        for process, command in zip(processes, commands):
            remaining = max(1.0, deadline - time.monotonic())
            out, err = process.communicate(timeout=remaining)
            if process.returncode not in (0, 1):
                raise RuntimeError(f"simulator exited {process.returncode}: {display(command)}\n{err.decode(errors='replace')[-2000:]}")
            reports.append(json.loads(out))
    finally:
        for process in processes:
            stop_process(process, timeout=5)
    return reports


@dataclass
class Measurement:
    """One run: the figures that go into the table, by metric key."""
    values: dict[str, float] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


def measure_traffic(scenario: str, broker: Broker, args: argparse.Namespace, timeout: float) -> Measurement:
    """A single-process scenario with publishers: throughput or latency."""
    command = simulate_command(args, scenario, broker.port)
    cpu_before = cpu_seconds(broker.pid)
    with Sampler(broker.pid) as sampler:
        report = run_simulators([command], timeout)[0]
    cpu = cpu_seconds(broker.pid) - cpu_before
    messages, latency = report["messages"], report["latency"]
    delivered = messages["delivered"]
    return Measurement({
        "ready": report["clients"]["ready"],
        "published": messages["published"],
        "delivered": delivered,
        "lost_pct": messages["lossRatio"] * 100,
        "held_back_pct": messages.get("heldBack", 0) / max(1, messages["published"] + messages.get("heldBack", 0)) * 100,
        "throughput": messages["sustainedDeliveryRate"],
        "delivery_rate": messages["deliveryRate"],
        "p50": latency["p50"], "p90": latency["p90"], "p99": latency["p99"], "p999": latency["p999"], "max": latency["max"],
        "cpu_s": cpu,
        "cpu_us_per_msg": cpu / delivered * 1e6 if delivered else 0.0,
        "rss_peak_mib": sampler.peak / 1024,
    }, [display(command)])


def split(total: int) -> list[int]:
    processes = -(-total // DEVICES_PER_SIMULATOR)
    return [total // processes + (1 if i < total % processes else 0) for i in range(processes)]


def measure_idle(broker: Broker, args: argparse.Namespace) -> Measurement:
    """19,000 idle devices from several simulator processes: RSS once all are connected, CPU while they idle."""
    total = args.idle_devices
    shares = split(total)
    baseline_rss = rss_kib(broker.pid)
    baseline_fds = open_descriptors(broker.pid)
    # Each process ramps its share so that together they connect at the scenario's rate (10,000/s).
    commands = [simulate_command(args, "bench-idle", broker.port,
                                 ["--mqtt-devices", str(n), "--connect-rate", str(10000 // len(shares)), "--threads", "1"])
                for n in shares]
    result: dict[str, float] = {}
    reports: list[dict] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            reports.extend(run_simulators(commands, timeout=120))
        except BaseException as e:  # reported below, after the sampling thread is done
            error.append(e)

    runner = threading.Thread(target=run)
    with Sampler(broker.pid) as sampler:
        runner.start()
        # Connected: the broker holds one descriptor per client.
        deadline = time.monotonic() + 60
        while open_descriptors(broker.pid) < baseline_fds + total and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.1)
        held = open_descriptors(broker.pid) - baseline_fds
        time.sleep(2.0)  # settle
        rss_held = rss_kib(broker.pid)
        cpu_start = cpu_seconds(broker.pid)
        time.sleep(4.0)
        cpu_idle = cpu_seconds(broker.pid) - cpu_start
        runner.join()
    if error:
        raise error[0]
    ready = sum(r["clients"]["ready"] for r in reports)
    result.update({
        "ready": ready,
        "held": held,
        "rss_baseline_mib": baseline_rss / 1024,
        "rss_held_mib": rss_held / 1024,
        "rss_per_conn_kib": (rss_held - baseline_rss) / max(ready, 1),
        "cpu_idle_ms_per_s": cpu_idle * 1000 / 4.0,
        "rss_peak_mib": sampler.peak / 1024,
    })
    return Measurement(result, [display(c) for c in commands])


def measure_storm(broker: Broker, args: argparse.Namespace) -> Measurement:
    """10,000 devices connect at once, from two simulator processes started together."""
    shares = split(args.storm_devices)
    commands = [simulate_command(args, "bench-connect-storm", broker.port, ["--mqtt-devices", str(n), "--threads", "1"])
                for n in shares]
    cpu_before = cpu_seconds(broker.pid)
    with Sampler(broker.pid) as sampler:
        reports = run_simulators(commands, timeout=120)
    cpu = cpu_seconds(broker.pid) - cpu_before
    ready = sum(r["clients"]["ready"] for r in reports)
    seconds = max(r["clients"]["connectSeconds"] for r in reports)
    return Measurement({
        "ready": ready,
        "connect_s": seconds,
        "connect_rate": ready / seconds if seconds > 0 else 0.0,
        "cpu_s": cpu,
        "rss_peak_mib": sampler.peak / 1024,
    }, [display(c) for c in commands])


# ---------------------------------------------------------------------------------------------------------------
# The table

@dataclass
class Row:
    label: str
    key: str
    unit: str
    digits: int = 1


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row]
    runner: str                   # "traffic", "idle" or "storm"
    timeout: float = 120
    mosquitto_nagle: bool = False  # also run mosquitto with its default (Nagle on)
    # Also run iotgw with this setting (`section.key: value`, not its default), reported apart.
    iotgw_variant: str = ""


THROUGHPUT_ROWS = [
    Row("delivered msg/s (first publish → last delivery)", "throughput", "msg/s", 0),
    Row("delivered within the publishing window, msg/s", "delivery_rate", "msg/s", 0),
    Row("lost", "lost_pct", "%", 2),
    Row("held back (due, not sent: the broker pushed back)", "held_back_pct", "%", 2),
    Row("broker CPU per delivered message", "cpu_us_per_msg", "µs", 2),
    Row("broker peak RSS", "rss_peak_mib", "MiB", 1),
]

SECTIONS = [
    Section("bench-idle", "Idle connections", [
        Row("connections held", "ready", "", 0),
        Row("broker RSS, idle before connections", "rss_baseline_mib", "MiB", 1),
        Row("broker RSS with every connection held", "rss_held_mib", "MiB", 1),
        Row("RSS per connection", "rss_per_conn_kib", "KiB", 2),
        Row("broker CPU while idle", "cpu_idle_ms_per_s", "ms/s", 2),
    ], "idle"),
    Section("bench-connect-storm", "Connect storm (10,000 devices at once)", [
        Row("connected", "ready", "", 0),
        Row("time until the last CONNACK", "connect_s", "s", 2),
        Row("connects per second", "connect_rate", "/s", 0),
        Row("broker CPU", "cpu_s", "s", 2),
        Row("broker peak RSS", "rss_peak_mib", "MiB", 1),
    ], "storm"),
    Section("bench-qos0-10to1", "QoS 0 fan-in, 10 publishers → 1 consumer", THROUGHPUT_ROWS, "traffic"),
    Section("bench-qos0-10to1-max", "QoS 0 fan-in at full speed, 10 publishers → 1 consumer (200,000 msg/s offered)",
            THROUGHPUT_ROWS, "traffic", iotgw_variant="limits.qos0_when_full: backpressure"),
    Section("bench-qos1-10to1", "QoS 1 fan-in, 10 publishers → 1 consumer", THROUGHPUT_ROWS, "traffic"),
    Section("bench-qos1-10to1-max", "QoS 1 fan-in at full speed, 10 publishers → 1 consumer (200,000 msg/s offered)",
            THROUGHPUT_ROWS, "traffic"),
    Section("bench-qos0-1to100", "QoS 0 fan-out, 1 publisher → 100 consumers", THROUGHPUT_ROWS, "traffic"),
    Section("bench-qos0-1to100-max",
            "QoS 0 fan-out at full speed, 1 publisher → 100 consumers (1,000,000 deliveries/s offered)",
            THROUGHPUT_ROWS, "traffic"),
    Section("bench-qos1-1to100", "QoS 1 fan-out, 1 publisher → 100 consumers", THROUGHPUT_ROWS, "traffic"),
    Section("bench-latency", "Latency at 5,000 msg/s from 1,000 devices (QoS 1)", [
        Row("p50", "p50", "ms", 3), Row("p90", "p90", "ms", 3), Row("p99", "p99", "ms", 3),
        Row("p99.9", "p999", "ms", 3), Row("max", "max", "ms", 3),
        Row("lost", "lost_pct", "%", 2),
        Row("broker CPU", "cpu_s", "s", 2),
        Row("broker peak RSS", "rss_peak_mib", "MiB", 1),
    ], "traffic", mosquitto_nagle=True, iotgw_variant="listeners.event_loops: 1"),
]


def run_section(section: Section, kind: str, args: argparse.Namespace, nodelay: bool = True,
                iotgw_variant: str = "") -> Measurement:
    broker = start_broker(kind, args, nodelay, iotgw_variant=iotgw_variant)
    try:
        if section.runner == "idle":
            return measure_idle(broker, args)
        if section.runner == "storm":
            return measure_storm(broker, args)
        return measure_traffic(section.name, broker, args, section.timeout)
    finally:
        broker.stop()


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def median(measurements: list[Measurement], key: str) -> float | None:
    values = [m.values[key] for m in measurements if key in m.values]
    return statistics.median(values) if values else None


def comparison_rows(rows: list[Row], ours: list[Measurement], theirs: list[Measurement]) -> list[str]:
    """Table rows `| label | ours | theirs | ours/theirs |`, medians of the rounds."""
    lines = []
    for row in rows:
        a, b = median(ours, row.key), median(theirs, row.key)
        ratio = f"{a / b:.2f}" if a is not None and b else "—"
        unit = f" {row.unit}" if row.unit else ""
        lines.append(f"| {row.label} | {fmt(a, row.digits)}{unit} | {fmt(b, row.digits)}{unit} | {ratio} |")
    return lines


def machine() -> dict[str, str]:
    memory = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "?"

    mosquitto_version = "?"
    try:
        out = subprocess.run([ARGS.mosquitto, "-h"], capture_output=True, text=True, timeout=10)
        mosquitto_version = (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "open files": f"{' / '.join(str(v) for v in __import__('resource').getrlimit(__import__('resource').RLIMIT_NOFILE))} (soft / hard)",
        "swift": version(["swift", "--version"]),
        "iotgw": version([ARGS.iotgw, "version"]),
        "mosquitto": mosquitto_version,
        "python": platform.python_version(),
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)",
    }


def micro_markdown(text: str) -> str:
    """The benchmark plugin's markdown without its console preamble, headings nested under ours."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), 0)
    out = []
    fenced = False
    for line in lines[start:]:
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            line = "#" + line
        out.append(line)
    return "\n".join(out).strip()


INGEST_CASES = [
    ("SQLite, QoS 0, 10 publishers", ["--qos", "0", "--devices", "10"]),
    ("SQLite, QoS 0, 1,000 publishers", ["--qos", "0", "--devices", "1000", "--rate", "200"]),
    ("SQLite, QoS 1 (`ack: persisted`), 10 publishers", ["--qos", "1", "--devices", "10", "--rate", "20000"]),
    ("SQLite, QoS 1 (`ack: persisted`), 100 publishers", ["--qos", "1", "--devices", "100", "--rate", "5000"]),
]
INGEST_KEYS = [("committed_rows_per_s", "rows committed/s", 0), ("gateway_cpu_s_per_s", "gateway CPU s/s", 2),
               ("commit_p50_ms", "commit p50 (ms)", 2), ("commit_p99_ms", "commit p99 (ms)", 2),
               ("acknowledged_missing", "acknowledged but missing after kill -9", 0)]


def run_ingest(args: argparse.Namespace, started: float) -> dict[str, list[dict]]:
    """Storage-on scenarios (Benchmarks/scripts/ingest_rate.py), `args.rounds` rounds each; the engine
    alone once per round with the first case."""
    cases = list(INGEST_CASES)
    url = os.environ.get("IOTGW_TEST_POSTGRES_URL")
    if url:
        cases += [("PostgreSQL, QoS 0, 10 publishers", ["--qos", "0", "--devices", "10", "--postgres", url]),
                  ("PostgreSQL, QoS 1 (`ack: persisted`), 100 publishers",
                   ["--qos", "1", "--devices", "100", "--rate", "5000", "--postgres", url])]
    out: dict[str, list[dict]] = {name: [] for name, _ in cases}
    script = REPO / "Benchmarks" / "scripts" / "ingest_rate.py"
    for round_number in range(args.rounds):
        for index, (name, extra) in enumerate(cases):
            command = [sys.executable, str(script), "--iotgw", args.iotgw, "--seconds", "10", "--json", *extra]
            if index == 0:
                command.append("--engine")
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise RuntimeError(f"ingest_rate.py failed: {result.stderr[-2000:]}")
            values = json.loads(result.stdout.strip().splitlines()[-1])
            out[name].append(values)
            print(f"[{(time.monotonic() - started) / 60:5.1f} min] ingest {name} round {round_number + 1}: {values}", flush=True)
    return out


def ingest_markdown(ingest: dict[str, list[dict]]) -> list[str]:
    def med(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = ["### Ingestion (storage on)", "",
             "The default configuration (SQLite in WAL mode, `synchronous: full`, every topic stored, `ack: persisted`, "
             "`pool.size` 4, `batch.max_rows` 2000) driven by `iotgw simulate` (64-byte payloads, as fast as the "
             "gateway takes them: a QoS 1 device keeps at most 100 messages unacknowledged, a QoS 0 device holds back while "
             "its socket pushes back; the simulator's `publish.window`). The rate is the gateway's "
             "`iotgw_ingest_committed_total` over the run after a 2 s warm-up; commit latency from "
             "`iotgw_ingest_commit_seconds`. For QoS 1 the gateway is killed with SIGKILL at the end and the "
             "simulator's acknowledged count compared with the rows (`Benchmarks/scripts/ingest_rate.py`).", "",
             "| scenario | " + " | ".join(label for _, label, _ in INGEST_KEYS) + " |",
             "|---|" + "---:|" * len(INGEST_KEYS)]
    for name, rows in ingest.items():
        cells = [fmt(med(rows, key), digits) for key, _, digits in INGEST_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = next(iter(ingest.values()), [])
    e2000, e500 = med(first, "engine_alone_rows_per_s_batch_2000"), med(first, "engine_alone_rows_per_s_batch_500")
    if e2000 is not None:
        lines += ["", f"The engine alone on this machine, the limit: {fmt(e2000, 0)} rows/s in transactions of 2,000 rows "
                  f"({fmt(e500, 0)} rows/s in transactions of 500), the same table, index and pragmas, inserted by a C loop "
                  "(`Benchmarks/engine/sqlite_engine.c`: one prepared INSERT, binds pointing at the row's bytes, "
                  "the system's libsqlite3) on an otherwise idle core, with no network, parsing or routing in front "
                  "of it. Each commit is an fsync, so rows per commit matter on a disk with slow fsyncs."]
    lines += ["", "<details><summary>Rounds</summary>", ""]
    for name, rows in ingest.items():
        for number, row in enumerate(rows, 1):
            lines.append(f"- {name} round {number}: {row}")
    lines += ["", "</details>", ""]
    return lines


def write_report(results: dict[str, dict[str, list[Measurement]]], args: argparse.Namespace, started: float,
                 info: dict[str, str], ingest: dict[str, list[dict]] | None = None) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` on {now:%Y-%m-%d %H:%M} UTC in {(time.monotonic() - started) / 60:.1f} minutes. "
        "Do not edit by hand: run `make bench` again.",
        "",
        "iotgw (release build) and Debian's mosquitto on the same machine, driven by the same simulator "
        "(`iotgw simulate`: libmosquitto clients on epoll loops, never iotgw's own codec), over loopback. Each scenario "
        f"runs {args.rounds} round{'s' if args.rounds != 1 else ''}, alternating which broker goes first, each on a freshly started broker; every figure "
        "is the median of the rounds. RSS is sampled from `/proc/PID/status` every 100 ms, CPU time is "
        "`utime + stime` from `/proc/PID/stat` around the run. The simulator shares the two cores with the broker, "
        "so throughput figures are what one machine does with both running, not the broker alone.",
        "",
        "Same limits on both: 1000 queued messages and 1 MiB per client, 32 messages in flight, no connection cap, "
        "TCP_NODELAY on (iotgw always sets it; mosquitto gets `set_tcp_nodelay true`, its default being false).",
        "",
        "The throughput scenarios offer a fixed load (100,000 msg/s at QoS 0 and 20,000 msg/s at QoS 1 for "
        "fan-in; 1,000 and 200 msg/s to 100 consumers for fan-out), two fan-in scenarios offer 200,000 msg/s and one QoS 0 "
        "fan-out scenario 1,000,000 deliveries/s, "
        "more than either broker carries, so their publishers run as fast as the broker lets them: a device "
        "keeps at most 100 QoS 1 messages unacknowledged, and at QoS 0 holds a message back while its socket "
        "pushes back (the simulator's `publish.window`); what it could not send is \"held back\", not lost. "
        "\"delivered msg/s (first publish → last delivery)\" is the rate the broker sustained, backlog included, "
        "so a figure below the offered load means the broker fell behind; \"lost\" counts what was sent and "
        "never arrived (a broker drops QoS 0 messages when a consumer's queue is full; mosquitto also drops QoS 1 "
        "messages past `max_queued_messages`, iotgw holds the publishers back instead, "
        "`limits.slow_consumer: backpressure`).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key, value in info.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Results", "", "Ratio is iotgw / mosquitto (for times, latencies, memory and CPU lower is better; "
              "for rates higher is better).", ""]
    for section in SECTIONS:
        if section.name not in results:
            continue
        data = results[section.name]
        lines += [f"### {section.title}", "", f"Scenario `Configs/scenarios/{section.name}.yaml`.", "",
                  "| metric | iotgw | mosquitto | iotgw/mosquitto |", "|---|---:|---:|---:|"]
        lines += comparison_rows(section.rows, data["iotgw"], data["mosquitto"])
        if "mosquitto-nagle" in data:
            lines += ["", "mosquitto with its default `set_tcp_nodelay false` (Nagle's algorithm on), same scenario:", "",
                      "| metric | mosquitto, Nagle on |", "|---|---:|"]
            for row in section.rows:
                value = median(data["mosquitto-nagle"], row.key)
                unit = f" {row.unit}" if row.unit else ""
                lines.append(f"| {row.label} | {fmt(value, row.digits)}{unit} |")
        if "iotgw-variant" in data:
            lines += ["", f"iotgw with `{section.iotgw_variant}` (not its default), same scenario and rounds:", "",
                      "| metric | iotgw, " + section.iotgw_variant + " | mosquitto | iotgw/mosquitto |", "|---|---:|---:|---:|"]
            lines += comparison_rows(section.rows, data["iotgw-variant"], data["mosquitto"])
        lines += ["", "<details><summary>Rounds</summary>", ""]
        for kind, measurements in data.items():
            for number, m in enumerate(measurements, 1):
                figures = ", ".join(f"{k} {fmt(v, 3)}" for k, v in m.values.items())
                lines.append(f"- {kind} round {number}: {figures}")
        lines += ["", "</details>", ""]

    if ingest:
        lines += ingest_markdown(ingest)

    if args.micro and Path(args.micro).exists():
        lines += ["## Micro-benchmarks", "",
                  "`Benchmarks/Package.swift` (ordo-one/benchmark), run by `make microbench`: the MQTT codec "
                  "(`MQTTPacketParser` and `MQTTPacket.write`, MQTT 3.1.1) per packet type, and topic matching in "
                  "GatewayCore's subscription index holding 100,000 subscriptions. Each benchmark does 1,000 "
                  "operations per iteration; the figures below are per operation (time) and operations per second "
                  "(throughput), percentiles over the iterations.", ""]
        lines.append(micro_markdown(Path(args.micro).read_text()))
        lines.append("")

    lines += ["## How to reproduce", "", "```sh", "make bench", "```", "",
              "which runs, from the repository root:", "", "```sh",
              "swift build -c release --scratch-path .build-release --product iotgw",
              "make microbench    # cd Benchmarks && swift package benchmark --format markdown ...",
              f"python3 Benchmarks/run_bench.py --iotgw {display([args.iotgw])} --rounds {args.rounds}"
              + (f" --micro {display([args.micro])}" if args.micro else ""),
              "```", "",
              "Each broker is started as below (a generated configuration on a free loopback port `PORT`), "
              "then the simulator commands run against it:", "", "```sh",
              "iotgw run --config iotgw.yaml",
              "mosquitto -c mosquitto.conf", "```", "", "iotgw.yaml:", "", "```yaml",
              iotgw_config(0).replace("port: 0", "port: PORT").strip(), "```", "", "mosquitto.conf:", "", "```",
              mosquitto_config(0, True).replace("listener 0", "listener PORT").strip(), "```", "",
              "Simulator commands (one round; `PORT` is the broker's port; the idle and connect-storm commands of a "
              "scenario run in parallel, the devices split so that no simulator process needs more than 20,000 "
              "descriptors):", "", "```sh"]
    for section in SECTIONS:
        if section.name in results:
            lines.extend(results[section.name]["iotgw"][0].commands)
    lines += ["```", ""]
    if ingest:
        lines += ["Ingestion (each starts its own gateway with the default storage in a temporary directory):", "", "```sh"]
        for name, extra in INGEST_CASES:
            lines.append(f"python3 Benchmarks/scripts/ingest_rate.py --iotgw {display([args.iotgw])} --seconds 10 {' '.join(extra)}"
                         + ("  # + --engine" if extra == INGEST_CASES[0][1] else ""))
        lines += ["```", ""]
    return "\n".join(lines)


def main() -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iotgw", default=str(REPO / ".build-release" / "release" / "iotgw"))
    parser.add_argument("--mosquitto", default=os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--simulator", help="the iotgw binary whose `simulate` drives the load (default: --iotgw), so two "
                        "gateway builds can be compared under the same simulator")
    parser.add_argument("--only", help="comma-separated scenario names, `ingest` for the storage-on scenarios (default: all)")
    parser.add_argument("--idle-devices", type=int, default=19000)
    parser.add_argument("--storm-devices", type=int, default=10000)
    parser.add_argument("--micro", help="markdown output of the micro-benchmarks to include")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()
    ARGS = args
    args.iotgw = os.path.abspath(args.iotgw)  # not resolve(): keep .build-release/release/ in the commands shown
    if args.simulator:
        args.simulator = os.path.abspath(args.simulator)
    for binary in (args.iotgw, args.mosquitto):
        if not os.access(binary, os.X_OK):
            print(f"run_bench: {binary} is not an executable", file=sys.stderr)
            return 2
    wanted = set(args.only.split(",")) if args.only else None
    started = time.monotonic()
    info = machine()
    results: dict[str, dict[str, list[Measurement]]] = {}
    for section in SECTIONS:
        if wanted and section.name not in wanted:
            continue
        data: dict[str, list[Measurement]] = {"iotgw": [], "mosquitto": []}
        if section.mosquitto_nagle:
            data["mosquitto-nagle"] = []
        if section.iotgw_variant:
            data["iotgw-variant"] = []
        for round_number in range(args.rounds):
            order = ["iotgw", "mosquitto"] if round_number % 2 == 0 else ["mosquitto", "iotgw"]
            for kind in order:
                t0 = time.monotonic()
                m = run_section(section, kind, args)
                data[kind].append(m)
                print(f"[{(time.monotonic() - started) / 60:5.1f} min] {section.name} round {round_number + 1} {kind}: "
                      + ", ".join(f"{k}={fmt(v, 3)}" for k, v in m.values.items())
                      + f" ({time.monotonic() - t0:.0f} s)", flush=True)
            if section.mosquitto_nagle:
                m = run_section(section, "mosquitto", args, nodelay=False)
                data["mosquitto-nagle"].append(m)
                print(f"[{(time.monotonic() - started) / 60:5.1f} min] {section.name} round {round_number + 1} "
                      f"mosquitto (Nagle on): p99={fmt(m.values.get('p99'), 3)} p99.9={fmt(m.values.get('p999'), 3)}", flush=True)
            if section.iotgw_variant:
                m = run_section(section, "iotgw", args, iotgw_variant=section.iotgw_variant)
                data["iotgw-variant"].append(m)
                print(f"[{(time.monotonic() - started) / 60:5.1f} min] {section.name} round {round_number + 1} "
                      f"iotgw ({section.iotgw_variant}): " + ", ".join(f"{k}={fmt(v, 3)}" for k, v in m.values.items()), flush=True)
        results[section.name] = data
    ingest = run_ingest(args, started) if not wanted or "ingest" in wanted else None
    report = write_report(results, args, started, info, ingest)
    Path(args.output).write_text(report)
    print(f"wrote {args.output} in {(time.monotonic() - started) / 60:.1f} minutes")
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    sys.exit(main())
