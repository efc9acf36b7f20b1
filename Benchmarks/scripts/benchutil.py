"""What the benchmark scripts share: a free loopback port, the open-file limit, process RSS, the report."""
import json
import resource
import socket
import sys


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_open_files(needed):
    """Raises this process's soft open-file limit to the hard one; exits when `needed` (+ headroom) won't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if needed > hard - 200:
        sys.exit(f"{needed} connections exceed this process's open-file limit ({hard}) minus headroom")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def report(result, as_json):
    """Prints `result` as one JSON line or as `key: value` lines."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
