"""Broker fixtures for the end-to-end suite.

``IOTGW_BROKER`` chooses the broker under test:

* ``iotgw`` (default): the binary at ``IOTGW_BIN`` (default ``<repo>/.build/debug/iotgw``),
  started as ``iotgw run --config FILE.yaml`` with a generated config.
* ``mosquitto``: Debian's mosquitto with a generated ``mosquitto.conf``; this validates the
  tests themselves against the reference implementation.

Each test gets its own broker on a fresh loopback port (``broker`` for the defaults,
``make_broker(...)`` for overrides in the iotgw config shape). The broker's output goes to
``broker0.log`` (``broker1.log``, ...) in the test's tmp dir; when a test fails, the log tail is attached to the
report. Teardown always stops the process: SIGTERM, then SIGKILL after a bound.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import BROKER_KIND, free_port, is_iotgw, port_accepts
# PostgreSQL fixtures (postgres_server, postgres_db, private_postgres), registered here for every test module.
from postgres_helpers import postgres_db, postgres_server, private_postgres  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
IOTGW_BIN = Path(os.environ.get("IOTGW_BIN", str(REPO / ".build" / "debug" / "iotgw")))
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"

if BROKER_KIND not in ("iotgw", "mosquitto"):
    raise pytest.UsageError(f"IOTGW_BROKER must be 'iotgw' or 'mosquitto', not {BROKER_KIND!r}")

START_TIMEOUT = 10.0  # seconds for the listener to accept connections
STOP_TIMEOUT = 15.0   # seconds between SIGTERM and SIGKILL in teardown

# The full iotgw configuration with the defaults from the config format. Tests override
# parts of it; the same dict drives the mosquitto.conf translation.
DEFAULT_CONFIG: dict[str, Any] = {
    "log": {"level": "debug"},
    # The WebSocket and TLS listeners are off unless a test turns them on (make_broker gives each
    # enabled one a free port).
    "listeners": {"mqtt": {"host": "127.0.0.1", "port": 0},
                  "ws": {"enabled": False}, "mqtts": {"enabled": False}, "wss": {"enabled": False}},
    "limits": {
        "max_connections": 100000,
        "max_packet_size": 1048576,
        "connect_timeout": 10,
        "max_inflight": 32,
        "max_queued_messages": 1000,
        "max_queued_bytes": 1048576,
        "global_max_queued_bytes": 268435456,
        "session_expiry": 86400,
    },
    "mqtt": {"max_qos": 2, "retain_available": True},
    "auth": {"anonymous": True},
    "shutdown": {"timeout": 10},
    # The admin HTTP listener is off unless a test turns it on (make_broker gives it a free port).
    "admin": {"enabled": False},
}

# Keys whose override has no mosquitto equivalent that matters for the tests that set them.
_MOSQUITTO_IGNORED = {"log.level", "shutdown.timeout", "limits.global_max_queued_bytes",
                      "limits.session_expiry", "listeners.mqtt.host", "listeners.mqtt.port",
                      "listeners.ws.enabled", "listeners.ws.host", "listeners.ws.port",
                      "storage.enabled"}  # the mosquitto config always says `persistence false`

#: Listeners make_broker gives a free port when a test enables them.
EXTRA_LISTENERS = ("ws", "mqtts", "wss")


def deep_merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def to_yaml(d: dict, indent: int = 0) -> str:
    """A minimal YAML emitter for nested dicts of scalars (no dependency on PyYAML)."""
    lines = []
    for key, value in d.items():
        pad = "  " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(value, indent + 1))
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{pad}{key}: {value}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(str(value))}")
    return "\n".join(lines)


def mosquitto_conf(config: dict, overridden: set[str]) -> str:
    """Translate the iotgw-shaped config into mosquitto.conf lines."""
    flat = flatten(config)
    for key in sorted(overridden):
        if key in _MOSQUITTO_IGNORED or key.startswith(("limits.max_", "mqtt.", "auth.")):
            continue
        pytest.skip(f"mosquitto has no equivalent of {key}")
    lines = [
        "per_listener_settings false",
        "persistence false",
        "log_dest stderr",
        "log_type all",
        "connection_messages true",
        f"max_inflight_messages {flat['limits.max_inflight']}",
        f"max_queued_messages {flat['limits.max_queued_messages']}",
        f"max_queued_bytes {flat['limits.max_queued_bytes']}",
        f"retain_available {'true' if flat['mqtt.retain_available'] else 'false'}",
        f"allow_anonymous {'true' if flat['auth.anonymous'] else 'false'}",
        f"listener {flat['listeners.mqtt.port']} {flat['listeners.mqtt.host']}",
        # mosquitto 2.0.11 admits max_connections + 1 clients (measured), hence the - 1.
        f"max_connections {flat['limits.max_connections'] - 1 if flat['limits.max_connections'] > 1 else -1}",
        f"max_packet_size {flat['limits.max_packet_size']}",
    ]
    if flat["mqtt.max_qos"] != 2:
        lines.append(f"max_qos {flat['mqtt.max_qos']}")
    if flat.get("listeners.ws.enabled"):
        # mosquitto's WebSocket listener speaks MQTT over WebSocket only (no JSON API).
        lines += [f"listener {flat['listeners.ws.port']} 127.0.0.1", "protocol websockets"]
    return "\n".join(lines) + "\n"


class Broker:
    """One broker process on a loopback port."""

    def __init__(self, kind: str, tmp_path: Path, config: dict, overridden: set[str], name: str,
                 config_format: str = "yaml", env: dict[str, str] | None = None):
        self.kind = kind
        #: Extra environment variables for the process (e.g. NOTIFY_SOCKET, WATCHDOG_USEC).
        self.env = env
        self.dir = tmp_path
        self.config = config
        self.port: int = config["listeners"]["mqtt"]["port"]
        #: Ports of the WebSocket/TLS listeners a test enabled (ws_port, mqtts_port, wss_port), else None.
        for listener in EXTRA_LISTENERS:  # not `name`: that names the log and config files below
            entry = config["listeners"].get(listener, {})
            setattr(self, f"{listener}_port", entry.get("port") if entry.get("enabled") else None)
        #: The admin HTTP listener's port when a test enabled it, else None.
        admin = config.get("admin", {})
        self.admin_port: int | None = admin.get("port") if admin.get("enabled") else None
        self.log_path = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        if kind == "iotgw":
            self.config_path = tmp_path / f"{name}.{config_format}"
            self.config_path.write_text(to_yaml(config) + "\n" if config_format == "yaml"
                                        else json.dumps(config, indent=2) + "\n")
            self.argv = [str(IOTGW_BIN), "run", "--config", str(self.config_path)]
        else:
            self.config_path = tmp_path / f"{name}.conf"
            self.config_path.write_text(mosquitto_conf(config, overridden))
            self.argv = [MOSQUITTO_BIN, "-c", str(self.config_path)]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def shutdown_timeout(self) -> float:
        return float(self.config["shutdown"]["timeout"])

    def start(self, timeout: float = START_TIMEOUT) -> "Broker":
        if self.kind == "iotgw" and not (IOTGW_BIN.is_file() and os.access(IOTGW_BIN, os.X_OK)):
            pytest.fail(f"iotgw binary not found at {IOTGW_BIN} (build with `swift build` or set IOTGW_BIN)",
                        pytrace=False)
        self._log = open(self.log_path, "ab")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir, env=env)
        deadline = time.monotonic() + timeout
        ports = [self.port] + [p for p in (getattr(self, f"{n}_port") for n in EXTRA_LISTENERS) if p]
        if self.admin_port:
            ports.append(self.admin_port)
        while not all(port_accepts(p) for p in ports):
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise AssertionError(f"{self.kind} exited with {self.proc.returncode} before listening\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} did not accept on 127.0.0.1:{self.port} within {timeout}s\n"
                                     f"{self.log_tail()}")
            time.sleep(0.02)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit; return its status, or None if still running."""
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        self._log.close()
        return self.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        tail = text.splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)


@pytest.fixture
def make_broker(request, tmp_path) -> Callable[..., Broker]:
    """Factory: ``make_broker(limits={"max_connections": 5})`` starts a broker with overrides.

    ``config_format="json"`` writes the iotgw config as JSON instead of YAML. ``admin={"enabled": True}``
    gives the admin listener a free port; ``env={...}`` adds environment variables to the process.
    """
    brokers: list[Broker] = []
    request.node.stash[_BROKERS_KEY] = brokers

    def factory(start: bool = True, config_format: str = "yaml", env: dict[str, str] | None = None,
                **overrides: Any) -> Broker:
        overrides = dict(overrides)
        admin = overrides.get("admin")
        if admin and admin.get("enabled") and "port" not in admin:
            admin["port"] = free_port()
        overrides.setdefault("listeners", {}).setdefault("mqtt", {})["port"] = free_port()
        if BROKER_KIND == "iotgw":
            # Each gateway keeps its database in the test's own directory (never in the checkout).
            overrides.setdefault("storage", {}).setdefault("data_dir", str(tmp_path / f"data{len(brokers)}"))
        for name in EXTRA_LISTENERS:
            entry = overrides["listeners"].get(name)
            if entry and entry.get("enabled") and "port" not in entry:
                entry["port"] = free_port()
        config = deep_merge(DEFAULT_CONFIG, overrides)
        overridden = set(flatten(overrides))
        if config_format != "yaml" and BROKER_KIND == "mosquitto":
            pytest.skip(f"mosquitto has no {config_format} config format")
        broker = Broker(BROKER_KIND, tmp_path, config, overridden, name=f"broker{len(brokers)}",
                        config_format=config_format, env=env)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield factory
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(make_broker) -> Broker:
    """A broker with the default configuration."""
    return make_broker()


_BROKERS_KEY = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for broker in item.stash.get(_BROKERS_KEY, []):
            report.sections.append((f"broker log ({broker.kind}, port {broker.port})", broker.log_tail()))
    return report


def pytest_report_header(config):
    target = f"{IOTGW_BIN}" if is_iotgw() else MOSQUITTO_BIN
    return f"iotgw integration: IOTGW_BROKER={BROKER_KIND} ({target})"
