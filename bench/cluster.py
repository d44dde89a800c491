"""
How fast a change made on one balancer of a cluster takes effect on the
others, and what sharing it costs the write.  Run by hand:

    python bench/cluster.py [--changes 200]

It starts, on 127.0.0.1 only and on free ports: one etcd (Debian's
C{etcd-server}, a temporary data directory), three balancers of one
cluster (C{[cluster]}, each with its C{[state]} copy), and one balancer
without C{[cluster]} (with a C{[state]} file, for the write latency
without sharing).  Then, for each of N changes (a weight override, a
different value each time, through C{PATCH /v1/servers/<id>} on balancer
"a"), it times:

 - the write: the PATCH's round trip through the API (with and without
   C{[cluster]});
 - the propagation: from the PATCH's answer to the moment both other
   balancers show the new weight (polled with C{GET} on each, every
   request back to back: the figure includes one poll's round trip).

It prints the median and the 99th percentile of each.  Everything started
is stopped by pid at the end, on an error and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from processes import stop  # noqa: E402
from running import free_ports, wait_until  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

MEMBER = """
[api]
enabled = true
bind = "127.0.0.1:{api}"
{cluster}
[state]
path = "{state}"

[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9"]
"""

CLUSTER = """
[cluster]
etcd_endpoints = ["http://127.0.0.1:{etcd}"]
cluster_name = "bench"
instance = "{name}"
"""

BACKEND = "127.0.0.1:9"


def answers(url: str) -> bool:
    """Whether C{url} answers now (any status)."""
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def wait_http(url: str, seconds: float = 30) -> None:
    """Until C{url} answers (any status), within C{seconds}."""
    wait_until(lambda: answers(url), seconds, url)


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API request: (status, decoded JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: {e.code} {e.read()[:300]!r}")


def weight_on(port: int) -> int | None:
    """The weight override of the benchmark's backend on the balancer whose API is on C{port}."""
    _, document = call(port, "GET", f"/v1/servers/{BACKEND}")
    overrides: dict[str, int] = document["data"]["attributes"]["overrides"]
    return overrides.get("weight")


def percentile(values: list[float], fraction: float) -> float:
    """The C{fraction} quantile (nearest rank) of C{values}."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def start_balancer(stack: ExitStack, directory: str, name: str, etcd: int | None) -> int:
    """Start balancer C{name} (in the cluster when C{etcd} is given); its API port."""
    [api] = free_ports(1)
    cluster = CLUSTER.format(etcd=etcd, name=name) if etcd is not None else ""
    path = os.path.join(directory, f"{name}.toml")
    with open(path, "w") as f:
        f.write(MEMBER.format(api=api, cluster=cluster, state=os.path.join(directory, f"{name}.state.toml")))
    log = open(os.path.join(directory, f"{name}.log"), "w")
    stack.callback(log.close)
    process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "balancer", "--config", path], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT},
                               text=True)
    stack.callback(stop, process)
    wait_http(f"http://127.0.0.1:{api}/v1/balancer")
    return api


def start_etcd(stack: ExitStack, directory: str) -> int:
    """Start etcd on free ports; its client port."""
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.path.exists(etcd):
        raise SystemExit("etcd not found: apt-get install etcd-server")
    client, peer = free_ports(2)
    log = open(os.path.join(directory, "etcd.log"), "w")
    stack.callback(log.close)
    process = subprocess.Popen([
        etcd, "--name", "bench", "--data-dir", os.path.join(directory, "etcd"),
        "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"bench=http://127.0.0.1:{peer}"], stdout=log, stderr=subprocess.STDOUT, text=True)
    stack.callback(stop, process)
    wait_http(f"http://127.0.0.1:{client}/health")
    return client


def patch_weight(port: int, weight: int) -> float:
    """Set the backend's weight override on C{port}; the round trip in seconds."""
    started = time.perf_counter()
    status, _ = call(port, "PATCH", f"/v1/servers/{BACKEND}",
                     {"data": {"attributes": {"parameters": {"weight": weight}}}})
    elapsed = time.perf_counter() - started
    if status not in (200, 204):
        raise SystemExit(f"PATCH answered {status}")
    return elapsed


def run(changes: int) -> dict[str, Any]:
    """Start everything, measure, stop everything; the figures in milliseconds."""
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        etcd = start_etcd(stack, directory)
        a, b, c = (start_balancer(stack, directory, name, etcd) for name in ("a", "b", "c"))
        alone = start_balancer(stack, directory, "alone", None)
        shared_writes, local_writes, propagation = [], [], []
        for i in range(changes):
            weight = 2 + i % 200
            shared_writes.append(patch_weight(a, weight))
            written = time.perf_counter()
            pending = {b, c}
            deadline = written + 10
            while pending and time.perf_counter() < deadline:
                pending = {port for port in pending if weight_on(port) != weight}
            if pending:
                raise SystemExit(f"change {i} not seen within 10 s on {sorted(pending)}")
            propagation.append(time.perf_counter() - written)
            local_writes.append(patch_weight(alone, weight))

        def figures(values: list[float]) -> dict[str, float]:
            return {"median_ms": round(statistics.median(values) * 1000, 2),
                    "p99_ms": round(percentile(values, 0.99) * 1000, 2)}

        return {"changes": changes, "propagation to both others": figures(propagation),
                "write with [cluster]": figures(shared_writes), "write without [cluster]": figures(local_writes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200, help="how many changes to time (default 200)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(1))
    result = run(options.changes)
    if options.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['changes']} changes (a weight override through PATCH on balancer a; 3 members, one etcd)")
    for name in ("propagation to both others", "write with [cluster]", "write without [cluster]"):
        values = result[name]
        print(f"  {name:28} median {values['median_ms']:7.2f} ms   p99 {values['p99_ms']:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
