"""(Operations) The gateway as the systemd unit runs it: an ordinary user without capabilities.

Until 2026-12-05 every accepted socket got `setsockopt(SOL_SOCKET, SO_DEBUG)` (TCP_NODELAY's number at the
socket level), which only root may set: run as any other user, the gateway stopped at its first
connection. Tests run as root here, so this one drops to `nobody` for the gateway process.
"""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import IOTGW_BIN
from helpers import PUBLISH, free_port, iotgw_only, publish_packet, raw_connected, unique, wait_until


def _drop_to(user: pwd.struct_passwd):
    def drop():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return drop


def test_unprivileged_gateway_serves_connections():
    iotgw_only("runs the iotgw binary as another user")
    drop = None
    if os.geteuid() == 0:
        try:
            drop = _drop_to(pwd.getpwnam("nobody"))
        except KeyError:
            pytest.skip("no 'nobody' user to run the gateway as")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="iotgw-unprivileged-") as directory:
        # Readable by the unprivileged user; storage off, so it writes nothing.
        os.chmod(directory, 0o755)
        config = Path(directory) / "iotgw.yaml"
        config.write_text(
            "log:\n  level: info\n"
            f"listeners:\n  mqtt:\n    host: 127.0.0.1\n    port: {port}\n  ws:\n    enabled: false\n"
            "admin:\n  enabled: false\nstorage:\n  enabled: false\n"
        )
        os.chmod(config, 0o644)
        log = open(Path(directory) / "gateway.log", "wb")
        process = subprocess.Popen([str(IOTGW_BIN), "run", "--config", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, preexec_fn=drop, cwd=directory)
        try:
            def listening():
                assert process.poll() is None, "the gateway exited while starting"
                try:
                    with raw_connected(port):
                        return True
                except OSError:
                    return False
            wait_until(listening, 30, interval=0.1, message="the unprivileged gateway accepts a connection")
            topic = unique("unprivileged")
            with raw_connected(port) as sub, raw_connected(port) as pub:
                sub.subscribe(1, [(topic, 1)])
                for n in range(1, 4):
                    pub.send(publish_packet(topic, f"m{n}".encode(), qos=1, packet_id=n))
                    pub.expect(bytes([0x40, 0x02, 0x00, n]), what="PUBACK")
                    p = sub.expect_packet(what="PUBLISH")
                    assert p.type == PUBLISH
                    got, pid, payload = p.publish_fields()
                    assert (got, payload) == (topic, f"m{n}".encode())
                    sub.send(bytes([0x40, 0x02]) + pid.to_bytes(2, "big"))
            assert process.poll() is None, "the gateway exited after serving connections"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            log.close()
            text = (Path(directory) / "gateway.log").read_text(errors="replace")
            assert "Permission denied" not in text, text[-2000:]
