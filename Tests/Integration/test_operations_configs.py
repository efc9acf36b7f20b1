"""(Operations) Every configuration file in Configs/ passes `iotgw check-config` and validates against
Configs/iotgw.schema.json; the schema rejects what check-config rejects."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import IOTGW_BIN, REPO
from helpers import iotgw_only

CONFIGS = sorted(p for p in (REPO / "Configs").iterdir() if p.suffix in (".yaml", ".yml", ".json")
                 and p.name != "iotgw.schema.json")
SCHEMA = json.loads((REPO / "Configs" / "iotgw.schema.json").read_text())


def load(path: Path):
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def check_config(path: Path, *flags: str) -> subprocess.CompletedProcess:
    iotgw_only("iotgw command line")
    return subprocess.run([str(IOTGW_BIN), "check-config", *flags, str(path)], capture_output=True, text=True, timeout=30)


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_validates_against_schema(path):
    jsonschema.Draft202012Validator(SCHEMA).validate(load(path) or {})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_passes_check_config(path):
    """Files whose TLS certificates live on the production host are checked without reading them;
    test_production_with_certificates reads them too."""
    config = load(path) or {}
    tls_enabled = any(config.get("listeners", {}).get(n, {}).get("enabled") for n in ("mqtts", "wss"))
    r = check_config(path, *(["--skip-tls-files"] if tls_enabled else []))
    assert r.returncode == 0, f"{path.name}: exit {r.returncode}\n{r.stdout}{r.stderr}"


def test_production_with_certificates(tmp_path):
    """Configs/production.yaml with its TLS paths pointing at real (throw-away) files passes the full
    check, certificate loading included."""
    iotgw_only("iotgw command line")
    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=30)
    text = (REPO / "Configs" / "production.yaml").read_text()
    text = (text.replace("/etc/iotgw/tls/server.pem", str(cert)).replace("/etc/iotgw/tls/server.key", str(key))
            .replace("/etc/iotgw/tls/devices-ca.pem", str(cert)))
    path = tmp_path / "production.yaml"
    path.write_text(text)
    r = check_config(path)
    assert r.returncode == 0, r.stdout + r.stderr
    # Without --skip-tls-files the shipped file fails on the missing certificate, naming the key.
    r = check_config(REPO / "Configs" / "production.yaml")
    assert r.returncode == 2 and "tls.cert_file" in r.stderr, r.stderr


def test_default_yaml_and_json_hold_the_same_configuration():
    assert load(REPO / "Configs" / "iotgw.yaml") == load(REPO / "Configs" / "iotgw.json")


@pytest.mark.parametrize("bad", [
    {"admin": {"port": 70000}},
    {"admin": {"bogus": 1}},
    {"admin": {"token": "has space"}},
    {"log": {"format": "xml"}},
    {"bogus": {}},
], ids=["admin-port", "admin-unknown-key", "admin-token-space", "log-format", "unknown-section"])
def test_schema_and_check_config_reject_the_same(tmp_path, bad):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    r = check_config(path)
    assert r.returncode == 2, r.stdout + r.stderr
