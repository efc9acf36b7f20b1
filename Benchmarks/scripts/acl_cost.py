#!/usr/bin/env python3
"""What the per-message ACL check costs: broker CPU in `make bench`'s latency scenario (1,000 devices, 5,000
QoS 1 msg/s into one `devices/+/telemetry` subscriber, 10 s) with no ACL and with 1,000 rules, two ways:

- `none`: no `auth.acl`.
- `unflagged`: 999 `deny read other/N/#` rules and a final `allow readwrite #`. No deny rule overlaps the
  subscription, so it is granted unflagged and its deliveries are not checked.
- `filtered`: the same, with one rule `deny read devices/nobody/telemetry` among them. It overlaps the
  subscription, so every delivery is checked against the rules (and none is withheld: no device is `nobody`).

Every variant publishes through the same 1,000 rules' write check (`allow readwrite #` is the last rule).
Variants run interleaved, --rounds times each, on a fresh gateway each; medians are printed.

Usage: acl_cost.py [--iotgw BIN] [--rounds 3] [--rules 1000] [--json]
Loopback only; each run is bounded by the scenario (10 s + drain) and a timeout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run_bench  # noqa: E402


def acl(rules: int, overlapping: bool) -> str:
    lines = ["auth:", "  acl:"]
    denies = [f"other/{i}/#" for i in range(rules - 1)]
    if overlapping:
        denies[len(denies) // 2] = "devices/nobody/telemetry"
    lines += [f'    - {{permission: deny, access: read, topic: "{t}"}}' for t in denies]
    lines.append('    - {permission: allow, access: readwrite, topic: "#"}')
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iotgw", default=str(run_bench.REPO / ".build-release" / "release" / "iotgw"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.simulator = None
    variants = {"none": "", "unflagged": acl(args.rules, False), "filtered": acl(args.rules, True)}
    results: dict[str, list[run_bench.Measurement]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, extra in variants.items():
            broker = run_bench.start_broker("iotgw", args, iotgw_extra=extra)
            try:
                m = run_bench.measure_traffic("bench-latency", broker, args, timeout=120)
            finally:
                broker.stop()
            results[name].append(m)
            print(f"round {round_ + 1} {name}: cpu {m.values['cpu_s']:.2f} s, delivered {m.values['delivered']:.0f}, "
                  f"p50 {m.values['p50']:.3f} p99 {m.values['p99']:.3f} ms", file=sys.stderr)
    summary = {name: {key: statistics.median(m.values[key] for m in ms)
                      for key in ("cpu_s", "cpu_us_per_msg", "delivered", "lost_pct", "p50", "p99", "p999")}
               for name, ms in results.items()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"medians of {args.rounds} ({args.rules} rules):")
        for name, v in summary.items():
            print(f"  {name:10s} cpu {v['cpu_s']:.2f} s ({v['cpu_us_per_msg']:.1f} µs/msg), delivered {v['delivered']:.0f}, "
                  f"lost {v['lost_pct']:.2f} %, p50/p99/p99.9 {v['p50']:.3f}/{v['p99']:.3f}/{v['p999']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
