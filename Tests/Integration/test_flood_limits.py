"""(Hardening) Limits against connection floods: connections per address and the CONNECT rate per address
refuse with the right codes, while clients from other addresses connect. Source addresses are taken from
127.0.0.0/8, so each test client is a machine of its own to the gateway."""

from __future__ import annotations

from helpers import CONNACK, RawClient, RawClient5, connect_packet, connect5_packet, iotgw_only, unique, wait_until
from operations_helpers import get, metric_samples


def _connack(held: list, source: str, port: int, v5: bool = False) -> int:
    """Connects from `source` (3.1.1 or MQTT 5), keeps the client in `held` and returns the CONNACK's code."""
    c = (RawClient5 if v5 else RawClient)(port, source=source)
    held.append(c)
    c.send(connect5_packet(unique("flood5")) if v5 else connect_packet(unique("flood")))
    p = c.expect_packet(what="CONNACK")
    assert p.type == CONNACK, p
    return p.body[1]


def _refusals(b) -> dict:
    samples = metric_samples(get(b.admin_port, "/metrics").body.decode())
    return {reason: samples.get(("iotgw_connections_refused_total", (("reason", reason),)), 0)
            for reason in ("address_limit", "connect_rate")}


def test_connections_per_address(make_broker):
    iotgw_only("limits.max_connections_per_address is iotgw's")
    b = make_broker(admin={"enabled": True}, storage={"enabled": False}, limits={"max_connections_per_address": 2})
    held: list = []
    try:
        assert [_connack(held, "127.0.0.2", b.port) for _ in range(2)] == [0, 0]
        # A third from the same address: 3.1.1 return code 3, MQTT 5 reason 0x97 (quota exceeded).
        assert _connack(held, "127.0.0.2", b.port) == 3
        held[-1].assert_closed(what="after the refusing CONNACK")
        assert _connack(held, "127.0.0.2", b.port, v5=True) == 0x97
        # Other addresses are not affected.
        assert [_connack(held, source, b.port) for source in ("127.0.0.3", "127.0.0.4")] == [0, 0]
        # When one of the address's connections goes, another may come.
        held[0].close()
        wait_until(lambda: _connack(held, "127.0.0.2", b.port) == 0, 10, interval=0.1,
                   message="a connection from 127.0.0.2 accepted again")
        assert _refusals(b)["address_limit"] >= 2
    finally:
        for c in held:
            c.close()


def test_connect_rate_per_address(make_broker):
    iotgw_only("limits.connect_rate_per_address is iotgw's")
    b = make_broker(admin={"enabled": True}, storage={"enabled": False},
                    limits={"connect_rate_per_address": 0.2, "connect_burst_per_address": 3})
    held: list = []
    try:
        # The burst: 3 CONNECTs at once are accepted; the 4th and 5th are refused (0x9F; 3.1.1: 3).
        assert [_connack(held, "127.0.0.5", b.port) for _ in range(3)] == [0, 0, 0]
        assert _connack(held, "127.0.0.5", b.port, v5=True) == 0x9F
        assert _connack(held, "127.0.0.5", b.port) == 3
        # Another address has a bucket of its own.
        assert _connack(held, "127.0.0.6", b.port) == 0
        assert _refusals(b)["connect_rate"] == 2
    finally:
        for c in held:
            c.close()
