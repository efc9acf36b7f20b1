"""(Hardening) A flood of bad packets writes a bounded number of log lines (the first few per 10 s, then a
summary), while the metric counts every one."""

from __future__ import annotations

import re

from helpers import RawClient, iotgw_only, wait_until
from operations_helpers import get, metric_samples

BAD_PACKETS = 1000


def test_1000_bad_packets_log_a_bounded_number_of_lines(make_broker):
    iotgw_only("flood-limited logging is iotgw's")
    b = make_broker(admin={"enabled": True}, storage={"enabled": False})
    for _ in range(BAD_PACKETS):
        with RawClient(b.port) as c:
            # A reserved packet type (0) as the first packet: malformed, the connection is closed.
            c.send(bytes([0x00, 0x00]))
            c.assert_closed(timeout=10, what="after a reserved packet type")

    def counted():
        samples = metric_samples(get(b.admin_port, "/metrics").body.decode())
        return samples.get(("iotgw_malformed_packets_total", ()), 0) == BAD_PACKETS
    wait_until(counted, 20, interval=0.2, message=f"iotgw_malformed_packets_total == {BAD_PACKETS}")

    # The summary of the last window comes at most 10 s (plus a housekeeping tick) after it started.
    def summarised():
        text = b.log_path.read_text(errors="replace")
        full = len(re.findall(r"\] closing connection after bad packet$", text, re.M))
        more = [int(m) for m in re.findall(r"(\d+) more like this from 1 address in the last 10 s: closing connection after bad packet", text)]
        return (full, more) if full + sum(more) == BAD_PACKETS else None
    full, more = wait_until(summarised, 30, interval=0.5, message="every bad packet logged in full or summarised")
    # 10 in full per 10 s window: a run of a few seconds spans at most three windows.
    assert full <= 30, f"{full} lines logged in full for {BAD_PACKETS} bad packets"
    assert more, "no summary line"
