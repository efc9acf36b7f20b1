"""(Operations) SIGHUP reloads the live settings (log level, auth, limits, mqtt.sys_interval, storage.topics)
without dropping connections; an invalid file keeps the running configuration."""

from __future__ import annotations

import signal

import pytest

from conftest import deep_merge, to_yaml
from helpers import (PINGREQ_BYTES, PINGRESP_BYTES, RawClient, iotgw_only, raw_connected, unique, wait_until)


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("SIGHUP reload is iotgw's")


def rewrite(b, overrides: dict) -> None:
    """Writes the broker's config file with ``overrides`` merged into what it started with."""
    b.config_path.write_text(to_yaml(deep_merge(b.config, overrides)) + "\n")


def log_count(b, text: str) -> int:
    return b.log_path.read_text(errors="replace").count(text)


def reload(b, expect: str) -> None:
    """SIGHUP, then wait for one more log line containing ``expect``."""
    before = log_count(b, expect)
    b.signal(signal.SIGHUP)
    wait_until(lambda: log_count(b, expect) > before, 10, message=f"log line {expect!r} after SIGHUP")


def still_up(c: RawClient) -> None:
    c.send(PINGREQ_BYTES)
    c.expect(PINGRESP_BYTES, what="PINGRESP (the connection survived the reload)")


def test_valid_reload_applies_anonymous_off_and_keeps_connections(make_broker):
    b = make_broker(log={"level": "info"}, auth={"anonymous": True})
    kept = raw_connected(b.port, client_id=unique("kept"))
    try:
        # Live keys change; limits.max_packet_size needs a restart and is reported, not applied.
        rewrite(b, {"auth": {"anonymous": False, "backend": "database"}, "log": {"level": "debug"},
                    "limits": {"max_packet_size": 2048}})
        reload(b, "configuration reloaded")
        # The restart-required line is logged after "configuration reloaded" and may reach the file later.
        wait_until(lambda: "iotgw.config.restart_required=limits.max_packet_size]" in b.log_path.read_text(), 10,
                   message="the restart_required log line")
        text = b.log_path.read_text()
        assert "iotgw.config.applied=auth.anonymous, auth.backend, log.level]" in text, text[-2000:]
        # The change took effect: anonymous clients are refused (3.1.1 return code 5)...
        with RawClient(b.port) as c:
            c.connect(unique("anon"), expect_rc=5)
        # ...and the connection made before the reload is still up.
        still_up(kept)
        # Back to anonymous: new clients are accepted again.
        rewrite(b, {"auth": {"anonymous": True, "backend": "none"}})
        reload(b, "configuration reloaded")
        with raw_connected(b.port):
            pass
        still_up(kept)
    finally:
        kept.close()


def test_invalid_file_keeps_running_configuration(make_broker):
    b = make_broker(auth={"anonymous": True})
    kept = raw_connected(b.port)
    try:
        # A misspelt key next to a change that would be live: nothing of the file applies.
        rewrite(b, {"auth": {"anonymous": False}, "limits": {"max_conections": 5}})
        reload(b, "configuration reload failed")
        failure = [line for line in b.log_path.read_text().splitlines() if "configuration reload failed" in line]
        assert "limits.max_conections: unknown key" in failure[-1], failure[-1]
        assert b.alive()
        still_up(kept)
        # The old configuration is still in effect: anonymous clients are accepted.
        with raw_connected(b.port):
            pass
        # A bad value (not only a bad key) is refused the same way.
        rewrite(b, {"limits": {"max_connections": 0}})
        reload(b, "configuration reload failed")
        with raw_connected(b.port):
            pass
        still_up(kept)
    finally:
        kept.close()


def test_max_connections_is_live(make_broker):
    b = make_broker()
    clients = [raw_connected(b.port) for _ in range(2)]
    try:
        rewrite(b, {"limits": {"max_connections": 2}})
        reload(b, "configuration reloaded")
        # A third connection is closed at accept; the two existing ones stay.
        extra = RawClient(b.port)
        try:
            assert extra.closed_within(5), "third connection was not refused after max_connections: 2"
        finally:
            extra.close()
        for c in clients:
            still_up(c)
        rewrite(b, {"limits": {"max_connections": 100}})
        reload(b, "configuration reloaded")
        with raw_connected(b.port):
            pass
    finally:
        for c in clients:
            c.close()


def test_sys_interval_is_live(make_broker):
    """mqtt.sys_interval 0 → 1 on SIGHUP: $SYS topics start being published."""
    b = make_broker(mqtt={"sys_interval": 0})
    with raw_connected(b.port) as c:
        c.subscribe(1, [("$SYS/broker/uptime", 0)])
        rewrite(b, {"mqtt": {"sys_interval": 1}})
        reload(b, "configuration reloaded")
        p = c.expect_packet(timeout=10, what="$SYS/broker/uptime after sys_interval became 1")
        topic, _, payload = p.publish_fields()
        assert topic == "$SYS/broker/uptime" and int(payload) >= 0


def test_storage_topics_are_live(make_broker):
    """storage.topics changed by SIGHUP: messages published afterwards are selected by the new filters
    (read back from the SQLite database), and the connection stays up."""
    import json
    import sqlite3
    from pathlib import Path

    from helpers import PahoClient, stop_all

    b = make_broker(config_format="json", storage={"topics": ["kept/#"]})
    tag = unique("live")
    database = Path(b.config["storage"]["data_dir"]) / "iotgw.db"

    def stored() -> set[str]:
        con = sqlite3.connect(str(database), timeout=5)
        try:
            return {row[0] for row in con.execute("SELECT topic FROM messages WHERE topic LIKE ?", (f"%/{tag}/%",))}
        finally:
            con.close()

    pub = PahoClient(b.port, client_id=f"{tag}-pub").start()
    try:
        pub.publish(f"kept/{tag}/1", b"a", qos=1)
        pub.publish(f"other/{tag}/1", b"b", qos=1)
        assert stored() == {f"kept/{tag}/1"}
        b.config_path.write_text(json.dumps(deep_merge(b.config, {"storage": {"topics": ["other/#"]}})) + "\n")
        reload(b, "configuration reloaded")
        assert "storage.topics" in b.log_path.read_text(errors="replace"), "the reload log names storage.topics"
        pub.publish(f"kept/{tag}/2", b"c", qos=1)
        pub.publish(f"other/{tag}/2", b"d", qos=1)
        assert stored() == {f"kept/{tag}/1", f"other/{tag}/2"}
    finally:
        stop_all([pub])
