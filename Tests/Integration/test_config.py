"""(12) Configuration files: `iotgw check-config`, `iotgw run` with a bad file, `iotgw version`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, IOTGW_BIN, MOSQUITTO_BIN, deep_merge, to_yaml
from helpers import free_port, iotgw_only, is_mosquitto, port_accepts

FORMATS = ["yaml", "json"]


def _require_binary() -> None:
    if not IOTGW_BIN.is_file():
        pytest.fail(f"iotgw binary not found at {IOTGW_BIN}", pytrace=False)


def _write(tmp_path: Path, fmt: str, config: dict, name: str = "iotgw") -> Path:
    path = tmp_path / f"{name}.{fmt}"
    path.write_text(to_yaml(config) + "\n" if fmt == "yaml" else json.dumps(config, indent=2) + "\n")
    return path


def _iotgw(*args: str, timeout: float = 15) -> subprocess.CompletedProcess:
    _require_binary()
    return subprocess.run([str(IOTGW_BIN), *args], capture_output=True, text=True, timeout=timeout)


def _valid_config() -> dict:
    return deep_merge(DEFAULT_CONFIG, {"listeners": {"mqtt": {"port": free_port()}}})


def test_version():
    iotgw_only("iotgw command line")
    r = _iotgw("version")
    assert r.returncode == 0, r
    assert (r.stdout + r.stderr).strip(), "version printed nothing"


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_config_valid(tmp_path, fmt):
    iotgw_only("iotgw command line")
    path = _write(tmp_path, fmt, _valid_config())
    r = _iotgw("check-config", str(path))
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"


def _set(config: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[leaf] = value
    return config


BAD_CASES = [
    # (id, key path to set, value, key path the error must name)
    ("unknown-key", "listeners.mqtt.bogus", 1, "listeners.mqtt.bogus"),
    ("unknown-top-level-key", "bogus", {"a": 1}, "bogus"),
    ("wrong-type-port", "listeners.mqtt.port", "abc", "listeners.mqtt.port"),
    ("out-of-range-port", "listeners.mqtt.port", 70000, "listeners.mqtt.port"),
    ("negative-limit", "limits.max_connections", -1, "limits.max_connections"),
    ("bad-log-level", "log.level", "loud", "log.level"),
    ("max-qos-3", "mqtt.max_qos", 3, "mqtt.max_qos"),
    ("wrong-type-bool", "auth.anonymous", "maybe", "auth.anonymous"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_check_config_rejects(tmp_path, fmt, case):
    """Invalid files: non-zero exit, and the message names the file and the key path."""
    iotgw_only("iotgw command line")
    _, key, value, expected_path = case
    path = _write(tmp_path, fmt, _set(_valid_config(), key, value))
    r = _iotgw("check-config", str(path))
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"accepted an invalid file ({key}={value!r}); output: {out}"
    assert path.name in out, f"error does not name the file {path.name}: {out!r}"
    assert expected_path in out, f"error does not name the key path {expected_path!r}: {out!r}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_config_syntax_error(tmp_path, fmt):
    iotgw_only("iotgw command line")
    path = tmp_path / f"broken.{fmt}"
    path.write_text("listeners: [unclosed\n" if fmt == "yaml" else '{"listeners": {"mqtt": ')
    r = _iotgw("check-config", str(path))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert path.name in out, out


def test_check_config_missing_file(tmp_path):
    iotgw_only("iotgw command line")
    path = tmp_path / "does-not-exist.yaml"
    r = _iotgw("check-config", str(path))
    assert r.returncode != 0
    assert path.name in r.stdout + r.stderr


def test_yaml_and_json_are_the_same_model(tmp_path):
    """The same settings in YAML and JSON are both valid (one model, two syntaxes)."""
    iotgw_only("iotgw command line")
    config = deep_merge(_valid_config(), {"limits": {"max_connections": 7}, "mqtt": {"max_qos": 1}})
    for fmt in FORMATS:
        r = _iotgw("check-config", str(_write(tmp_path, fmt, config, name=f"same-{fmt}")))
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_run_with_bad_config_exits_without_listening(tmp_path, fmt):
    """`run` with an invalid file exits non-zero and never listens (mosquitto: unknown option)."""
    port = free_port()
    if is_mosquitto():
        if fmt == "json":
            pytest.skip("mosquitto has no JSON config")
        path = tmp_path / "bad.conf"
        path.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nbogus_option 1\n")
        argv = [MOSQUITTO_BIN, "-c", str(path)]
    else:
        _require_binary()
        config = _valid_config()
        config["listeners"]["mqtt"]["port"] = port
        config["limits"]["bogus"] = 1
        path = _write(tmp_path, fmt, config)
        argv = [str(IOTGW_BIN), "run", "--config", str(path)]
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            listened = False
            while proc.poll() is None and time.monotonic() < deadline:
                listened = listened or port_accepts(port, timeout=0.05)
                time.sleep(0.02)
            rc = proc.poll()
            assert rc is not None, f"still running 10 s after starting with a bad config:\n{log.read_text()}"
            assert rc != 0, f"exit 0 with a bad config:\n{log.read_text()}"
            assert not listened, "accepted a connection although the config is invalid"
            assert not port_accepts(port)
            if not is_mosquitto():
                text = log.read_text()
                assert path.name in text and "limits.bogus" in text, text
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
