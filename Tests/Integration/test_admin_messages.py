"""GET /api/v1/messages: stored telemetry read back through the admin API (and the storage pool)."""

from __future__ import annotations

import base64
import subprocess

import pytest

from helpers import is_iotgw, unique
from operations_helpers import get

pytestmark = pytest.mark.skipif(not is_iotgw(), reason="the admin API is iotgw's")


def publish(port: int, topic: str, payload: bytes, qos: int = 1) -> None:
    """mosquitto_pub returns after the PUBACK, i.e. (ack: persisted) after the row committed."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos), "-s"],
                   input=payload, check=True, timeout=10)


def test_messages_by_topic_since_and_pages(make_broker):
    b = make_broker(admin={"enabled": True})
    topic, other = unique("api/t"), unique("api/o")
    for i in range(5):
        publish(b.port, topic, f'{{"n":{i}}}'.encode())
    publish(b.port, other, b"\xff\x00binary")

    everything = get(b.admin_port, "/api/v1/messages?limit=100")
    assert everything.status == 200, everything.body
    rows = everything.json()["messages"]
    assert [r["topic"] for r in rows] == [topic] * 5 + [other]
    assert rows[0]["payload"] == '{"n":0}' and rows[0]["qos"] == 1 and rows[0]["retain"] is False
    assert rows[-1]["encoding"] == "base64" and base64.b64decode(rows[-1]["payload"]) == b"\xff\x00binary"

    page1 = get(b.admin_port, f"/api/v1/messages?topic={topic}&limit=2").json()
    assert [r["payload"] for r in page1["messages"]] == ['{"n":0}', '{"n":1}']
    page2 = get(b.admin_port, f"/api/v1/messages?topic={topic}&limit=2&after={page1['next']}").json()
    assert [r["payload"] for r in page2["messages"]] == ['{"n":2}', '{"n":3}']

    later = get(b.admin_port, f"/api/v1/messages?since={rows[-1]['received_at']}").json()["messages"]
    assert later and all(r["received_at"] >= rows[-1]["received_at"] for r in later)

    assert get(b.admin_port, "/api/v1/messages?limit=0").status == 400
    assert get(b.admin_port, "/api/v1/messages?since=yesterday").status == 400


def test_messages_need_the_token_and_storage(make_broker):
    b = make_broker(admin={"enabled": True, "token": "s3cret"})
    assert get(b.admin_port, "/api/v1/messages").status == 401
    assert get(b.admin_port, "/api/v1/messages", token="s3cret").status == 200
    off = make_broker(admin={"enabled": True}, storage={"enabled": False})
    assert get(off.admin_port, "/api/v1/messages").status == 404
