"""
Compare this balancer with its peers and with no proxy at all, on loopback,
for every protocol it relays: plain TCP, TLS termination, SNI routing
(TLS passthrough) and UDP.

Needs (installs nothing)::

    apt-get install haproxy iperf3 wrk nginx-light libnginx-mod-stream openssl

Run from the repository, with the Python that has Twisted::

    python bench/compare.py [--only tcp,tls,sni,udp] [--repeat N]
        [--duration S] [--workers N] [--tls 1.2|1.3] [--harness standard|alt|both]
        [--access-log] [--before DIR] [--quick] [--json]

It starts, on 127.0.0.1 only and on free ports (modules of this directory):

 - backends (C{peers.py}): nginx (one worker, keep-alive, a small index and
   a large file, over HTTP, over HTTPS, and as two HTTPS servers named
   a.bench.test and b.bench.test), C{iperf3 -s}, a UDP echo server
   (C{udpbench.py});
 - the peers, anew for each round: HAProxy 2.6 (C{mode tcp}, C{nbthread N};
   C{ssl crt} for TLS; C{req.ssl_sni} for SNI) and nginx's C{stream} module
   for UDP (C{proxy_responses 1}, N workers);
 - this balancer from the working tree, anew for each round (C{twistd -n
   balancer}, C{[defaults] workers = N}, access log off unless
   C{--access-log}), and with C{--before DIR} the balancer of another
   source tree (an earlier checkout: C{git worktree add DIR REV}) beside
   it, so that a change is measured before and after in the same rounds.

Each round measures each figure for every path in turn (direct, the peer,
the balancer); the tables give the medians of the rounds and the
balancer's ratios.  The figures (C{docs/benchmarks.md} says what each
means): TCP bulk (iperf3, 1 and 4 streams), new connections/s with the
proxy's CPU per connection (wrk, C{Connection: close}), kept-alive
requests/s with p50/p99 (wrk), RSS per idle connection; TLS full and
resumed handshakes/s with CPU per handshake (C{handshakes.py}, each
checking that sessions were, or were not, resumed), bulk through TLS (wrk
downloading a large file), kept-alive requests/s over TLS, RSS per idle TLS
connection; SNI routing new connections/s (full handshakes with nginx
through the router); UDP request/response datagrams/s (C{udpbench.py}).

Everything started is stopped by pid on exit, on an error, on SIGINT and on
SIGTERM; every client run has a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients  # noqa: E402
from harness import SETTINGS, Harness  # noqa: E402
from handshakes import client_context  # noqa: E402
from peers import (  # noqa: E402
    STREAM_MODULE, Backends, Endpoints, Tls, make_certificate, start_backends, start_balancer, start_haproxy,
    start_nginx_stream,
)
from running import (  # noqa: E402
    HOST, SETTLE_TIMEOUT, MeasurementError, Processes, established_to, raise_nofile, slab_kib, tree_cpu_times,
    tree_rss_kib, wait_until,
)

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ("tcp", "tls", "sni", "udp")
TOOLS = ("haproxy", "iperf3", "wrk", "nginx", "openssl")
IDLE_CONNECTIONS = 1000
PEERS = {"tcp": "haproxy", "tls": "haproxy", "sni": "haproxy", "udp": "nginx"}
# The balancer's roles (one [servers.X] each) for each protocol.
ROLES = {"tcp": ["http", "bulk"], "tls": ["tls"], "sni": ["sni"], "udp": ["udp", "udp1"]}


@dataclass(frozen=True)
class Metric:
    """One row of a protocol's table; C{throughput} rows are held to the harness-independence check."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    throughput: bool = False


METRICS = {
    "tcp": (
        Metric("tcp.bulk_1", "bulk throughput, 1 stream", "Gbit/s", True, True),
        Metric("tcp.bulk_4", "bulk throughput, 4 streams", "Gbit/s", True, True),
        Metric("tcp.conn_rate", "new connections (Connection: close)", "conn/s", True, True),
        Metric("tcp.conn_cpu", "  proxy CPU per new connection", "us", False),
        Metric("tcp.conn_user_cpu", "    of it in user space", "us", False),
        Metric("tcp.keepalive_rps", "requests over kept-alive connections", "req/s", True, True),
        Metric("tcp.keepalive_p50", "  latency p50", "ms", False),
        Metric("tcp.keepalive_p99", "  latency p99", "ms", False),
        Metric("tcp.keepalive_cpu", "  proxy CPU per request", "us", False),
        Metric("tcp.keepalive_user_cpu", "    of it in user space", "us", False),
        Metric("tcp.idle_rss", "proxy RSS per idle connection", "KiB", False),
        Metric("tcp.idle_slab", "kernel Slab per idle connection", "KiB", False),
    ),
    "tls": (
        Metric("tls.full_rate", "full handshakes (+1 request)", "conn/s", True, True),
        Metric("tls.full_cpu", "  proxy CPU per full handshake", "us", False),
        Metric("tls.resumed_rate", "resumed handshakes (+1 request)", "conn/s", True, True),
        Metric("tls.resumed_cpu", "  proxy CPU per resumed handshake", "us", False),
        Metric("tls.resumed_share", "  share of them resumed", "%", True),
        Metric("tls.bulk", "bulk through TLS (download)", "MB/s", True, True),
        Metric("tls.keepalive_rps", "requests over kept-alive TLS", "req/s", True, True),
        Metric("tls.keepalive_p50", "  latency p50", "ms", False),
        Metric("tls.keepalive_p99", "  latency p99", "ms", False),
        Metric("tls.idle_rss", "proxy RSS per idle TLS connection", "KiB", False),
    ),
    "sni": (
        Metric("sni.conn_rate", "new connections (full TLS with nginx)", "conn/s", True, True),
        Metric("sni.conn_cpu", "  proxy CPU per connection", "us", False),
    ),
    "udp": (
        Metric("udp.rate", "request/response, sessions kept", "req/s", True, True),
        Metric("udp.cpu", "  proxy CPU per request/response", "us", False),
        Metric("udp.lost", "  datagrams lost (resent after 200 ms)", "count", False),
        Metric("udp.rate_1", "request/response, 1 answer a session", "req/s", True, True),
        Metric("udp.cpu_1", "  proxy CPU per request/response", "us", False),
        Metric("udp.lost_1", "  datagrams lost (resent after 200 ms)", "count", False),
    ),
}

Samples = dict[str, dict[str, dict[str, list[float]]]]  # harness name -> metric key -> path -> values
# A measurement: of one path under one harness, or (idle memory) of one path.
Measure = Callable[[Harness, Endpoints], dict[str, float]]
IdleMeasure = Callable[[Endpoints], dict[str, float]]


@dataclass(frozen=True)
class CpuCost:
    """A proxy's CPU time per counted thing, in µs: in all, and the part of it in user space."""

    total: float
    user: float


def cpu_per(
    pid: int | None, action: Callable[[], dict[str, float]], count_key: str
) -> tuple[dict[str, float], CpuCost | None]:
    """Run C{action}; return its result and, for a proxy, its CPU time per C{result[count_key]}."""
    user_before, system_before = tree_cpu_times(pid) if pid else (0.0, 0.0)
    result = action()
    if not pid or not result.get(count_key):
        return result, None
    user, system = tree_cpu_times(pid)
    count = result[count_key]
    return result, CpuCost(
        (user - user_before + system - system_before) / count * 1e6, (user - user_before) / count * 1e6
    )


@contextlib.contextmanager
def idle_connections(connect: Callable[[], socket.socket], backend: int, count: int) -> Iterator[None]:
    """
    Hold C{count} idle connections made by C{connect} open while the block runs.

    Waits first for earlier connections to the C{backend} port to be gone;
    the block is entered once C{count} connections reach it (for a proxy:
    once it connected to the backend for each client), and left once they
    are gone again.
    """
    wait_until(lambda: established_to(backend) == 0, SETTLE_TIMEOUT, "earlier connections to the backend to close")
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(connect())
        wait_until(lambda: established_to(backend) >= count, SETTLE_TIMEOUT, f"{count} connections to the backend")
        yield
    finally:
        for s in sockets:
            s.close()
    wait_until(lambda: established_to(backend) == 0, SETTLE_TIMEOUT, "the idle connections to close")


def measure_idle(pid: int | None, connect: Callable[[], socket.socket], backend: int, prefix: str) -> dict[str, float]:
    """KiB per idle connection: the proxy's RSS growth (not for direct) and the kernel's Slab growth."""
    rss_before = tree_rss_kib(pid) if pid else 0
    slab_before = slab_kib()
    with idle_connections(connect, backend, IDLE_CONNECTIONS):
        time.sleep(0.5)
        rss_after = tree_rss_kib(pid) if pid else 0
        slab_after = slab_kib()
    result = {f"{prefix}.idle_slab": (slab_after - slab_before) / IDLE_CONNECTIONS}
    if pid:
        result[f"{prefix}.idle_rss"] = (rss_after - rss_before) / IDLE_CONNECTIONS
    return result


def plain_connection(port: int) -> Callable[[], socket.socket]:
    """A function making one TCP connection to C{port}."""
    return lambda: socket.create_connection((HOST, port), timeout=5)


def tls_connection(port: int, tls: str) -> Callable[[], socket.socket]:
    """A function making one TLS connection to C{port}, its handshake done."""
    context = client_context(tls)
    return lambda: context.wrap_socket(socket.create_connection((HOST, port), timeout=5), server_hostname="bench.test")


def negotiated(port: int, tls: str) -> str:
    """The TLS version and cipher a server on C{port} agrees to with the bench's clients."""
    with tls_connection(port, tls)() as s:
        assert isinstance(s, ssl.SSLSocket)
        cipher = s.cipher()
        return f"{s.version()} {cipher[0] if cipher else '?'}"


def steps(protocol: str, backends: Backends, tls: Tls, duration: float) -> list[tuple[str, Measure]]:
    """The measurements of C{protocol}, each a function of the harness and a path's endpoints."""
    if protocol == "tcp":

        def new_connections(h: Harness, e: Endpoints) -> dict[str, float]:
            url = f"http://{HOST}:{e.ports['http']}/index.html"
            result, cpu = cpu_per(
                e.pid, lambda: clients.wrk(url, duration, h.wrk_connections, close=True, threads=h.wrk_threads), "rps"
            )
            out = {"tcp.conn_rate": result["rps"]}
            if cpu is not None:
                # CPU per connection: the count is a rate.
                out["tcp.conn_cpu"], out["tcp.conn_user_cpu"] = cpu.total / duration, cpu.user / duration
            return out

        def keepalive(h: Harness, e: Endpoints) -> dict[str, float]:
            url = f"http://{HOST}:{e.ports['http']}/index.html"
            r, cpu = cpu_per(e.pid, lambda: clients.wrk(url, duration, h.wrk_connections, threads=h.wrk_threads), "rps")
            out = {"tcp.keepalive_rps": r["rps"], "tcp.keepalive_p50": r["p50"], "tcp.keepalive_p99": r["p99"]}
            if cpu is not None:
                out["tcp.keepalive_cpu"], out["tcp.keepalive_user_cpu"] = cpu.total / duration, cpu.user / duration
            return out

        def iperf3_bulk(streams: int) -> Measure:
            return lambda h, e: {f"tcp.bulk_{streams}": clients.iperf3(e.ports["bulk"], streams, duration,
                                                                         h.iperf3_length)}

        return [
            ("bulk, 1 stream", iperf3_bulk(1)),
            ("bulk, 4 streams", iperf3_bulk(4)),
            ("new connections", new_connections),
            ("kept-alive requests", keepalive),
        ]
    if protocol == "tls":

        def handshakes(resume: bool) -> Measure:
            key = "tls.resumed" if resume else "tls.full"

            def measure(h: Harness, e: Endpoints) -> dict[str, float]:
                result, cpu = cpu_per(
                    e.pid,
                    lambda: clients.handshakes([("bench.test", e.ports["tls"])], h.handshake_clients, duration,
                                               tls.version, resume),
                    "connections",
                )
                out = {f"{key}_rate": result["rate"]}
                if resume:
                    out["tls.resumed_share"] = result["reused"] * 100
                if cpu is not None:
                    out[f"{key}_cpu"] = cpu.total
                return out

            return measure

        def bulk(h: Harness, e: Endpoints) -> dict[str, float]:
            url = f"https://{HOST}:{e.ports['tls']}/big.bin"
            r = clients.wrk(url, duration, h.tls_bulk_connections, timeout=30)
            return {"tls.bulk": r["bytes_per_s"] / 1e6}

        def keepalive(h: Harness, e: Endpoints) -> dict[str, float]:
            url = f"https://{HOST}:{e.ports['tls']}/index.html"
            r = clients.wrk(url, duration, h.wrk_connections, threads=h.wrk_threads)
            return {"tls.keepalive_rps": r["rps"], "tls.keepalive_p50": r["p50"], "tls.keepalive_p99": r["p99"]}

        return [
            ("full handshakes", handshakes(False)),
            ("resumed handshakes", handshakes(True)),
            ("bulk through TLS", bulk),
            ("kept-alive TLS requests", keepalive),
        ]
    if protocol == "sni":

        def sni(h: Harness, e: Endpoints) -> dict[str, float]:
            result, cpu = cpu_per(
                e.pid, lambda: clients.handshakes(e.sni, h.handshake_clients, duration, tls.version, False),
                "connections",
            )
            out = {"sni.conn_rate": result["rate"]}
            if cpu is not None:
                out["sni.conn_cpu"] = cpu.total
            return out

        return [("SNI-routed connections", sni)]

    def datagrams(role: str, suffix: str) -> Measure:
        def measure(h: Harness, e: Endpoints) -> dict[str, float]:
            # Direct, both figures go to the echo server.
            port = e.ports["udp"] if e.pid is None else e.ports[role]
            result, cpu = cpu_per(
                e.pid, lambda: clients.udp(port, h.udp_clients, h.udp_processes, duration, h.udp_size), "rate"
            )
            out = {f"udp.rate{suffix}": result["rate"], f"udp.lost{suffix}": result["lost"]}
            if cpu is not None:
                out[f"udp.cpu{suffix}"] = cpu.total / duration  # CPU per answer: the count is a rate
            return out

        return measure

    return [("UDP, sessions kept", datagrams("udp", "")), ("UDP, 1 answer a session", datagrams("udp1", "_1"))]


def idle_steps(protocols: list[str], backends: Backends, tls: Tls) -> list[tuple[str, IdleMeasure]]:
    """The idle-connection memory measurements (taken first in a round, on fresh proxies)."""
    found: list[tuple[str, IdleMeasure]] = []
    if "tcp" in protocols:
        found.append(("idle connections", lambda e: measure_idle(
            e.pid, plain_connection(e.ports["http"]), backends.http if e.pid else e.ports["http"], "tcp")))
    if "tls" in protocols:
        found.append(("idle TLS connections", lambda e: {
            k: v for k, v in measure_idle(
                e.pid, tls_connection(e.ports["tls"], tls.version), backends.http if e.pid else e.ports["tls"], "tls"
            ).items() if k != "tls.idle_slab"
        }))
    return found


@dataclass(frozen=True)
class Options:
    """What a run measures and how."""

    protocols: list[str]
    repeat: int
    duration: float
    workers: int
    tls: str
    harnesses: tuple[Harness, ...]
    access_log: bool
    before: Path | None = None


def path_names(options: Options) -> list[str]:
    """
    The paths of every figure: direct, the peer, the balancer (and the
    balancer with its access log, and the balancer of C{--before}).
    """
    return (["direct", "peer", "balancer"] + (["balancer+log"] if options.access_log else [])
            + (["before"] if options.before else []))


def run(options: Options, progress: Callable[[str], None]) -> tuple[Samples, dict[str, str]]:
    """
    Start the backends, take C{options.repeat} interleaved rounds of samples, stop everything.

    The peers and the balancer are started anew for each round, so that
    the idle-connection memory, measured first, is that of a fresh process.
    Returns the samples, by harness, metric and path, and the TLS version and
    cipher each path negotiated.  A failed measurement is reported through
    C{progress} and leaves its sample out.
    """
    raise_nofile(4 * IDLE_CONNECTIONS + 1024)
    names = path_names(options)
    samples: Samples = {
        h.name: {m.key: {p: [] for p in names} for pr in options.protocols for m in METRICS[pr]}
        for h in options.harnesses
    }
    agreed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        backends_procs = Processes(workdir)
        try:
            tls = make_certificate(workdir, options.tls)
            big = max(h.tls_bulk_bytes for h in options.harnesses)
            backends = start_backends(backends_procs, workdir, tls, big)
            direct = Endpoints(
                {"http": backends.http, "bulk": backends.bulk, "tls": backends.https, "udp": backends.udp},
                None,
                [(n, p) for n, p in zip(("a.bench.test", "b.bench.test"), backends.sni)],
            )
            for round_ in range(1, options.repeat + 1):
                proxies = Processes(workdir)
                try:
                    paths = start_paths(proxies, workdir, options, backends, tls, direct)
                    if "tls" in options.protocols and round_ == 1:
                        agreed = {name: negotiated(paths[name]["tls"].ports["tls"], options.tls) for name in names}
                        if len(set(agreed.values())) != 1:
                            raise RuntimeError(f"the paths did not agree on the same TLS: {agreed}")
                    for what, idle in idle_steps(options.protocols, backends, tls):
                        for name in names:
                            progress(f"round {round_}/{options.repeat}: {what}, {name}")
                            endpoints = paths[name]["tcp" if what == "idle connections" else "tls"]
                            record(samples, options.harnesses, lambda: idle(endpoints), name, progress)
                    for protocol in options.protocols:
                        for what, step in steps(protocol, backends, tls, options.duration):
                            for harness in options.harnesses:
                                for name in names:
                                    progress(f"round {round_}/{options.repeat}: {what}, {harness.name}, {name}")
                                    endpoints = paths[name][protocol]
                                    record(samples, (harness,), lambda: step(harness, endpoints), name, progress)
                finally:
                    proxies.stop_all()
        finally:
            backends_procs.stop_all()
    return samples, agreed


def record(
    samples: Samples, harnesses: tuple[Harness, ...], measure: Callable[[], dict[str, float]], name: str,
    progress: Callable[[str], None],
) -> None:
    """Add what C{measure} returns to the samples of C{name} (under each of C{harnesses}), or report its failure."""
    try:
        for key, value in measure().items():
            for harness in harnesses:
                samples[harness.name][key][name].append(value)
    except MeasurementError as e:
        progress(f"  failed: {e}")


def start_paths(
    procs: Processes, workdir: Path, options: Options, backends: Backends, tls: Tls, direct: Endpoints
) -> dict[str, dict[str, Endpoints]]:
    """Start the peers and the balancer(s) of one round; the endpoints of each path, by protocol."""
    haproxy_roles = [r for p in options.protocols if p != "udp" for r in ROLES[p]]
    roles = [r for p in options.protocols for r in ROLES[p]]
    peer: dict[str, Endpoints] = {}
    if haproxy_roles:
        haproxy = start_haproxy(procs, workdir, haproxy_roles, backends, tls, options.workers)
        peer.update({p: haproxy for p in options.protocols if p != "udp"})
    if "udp" in options.protocols:
        peer["udp"] = start_nginx_stream(procs, workdir, backends, options.workers)
    balancer = start_balancer(procs, workdir, roles, backends, tls, options.workers, access_log=False)
    paths = {
        "direct": {p: direct for p in options.protocols},
        "peer": peer,
        "balancer": {p: balancer for p in options.protocols},
    }
    if options.access_log:
        logged = start_balancer(procs, workdir, roles, backends, tls, options.workers, access_log=True,
                                name="balancer-log")
        paths["balancer+log"] = {p: logged for p in options.protocols}
    if options.before:
        before = start_balancer(procs, workdir, roles, backends, tls, options.workers, access_log=False,
                                name="before", repo=options.before)
        paths["before"] = {p: before for p in options.protocols}
    return paths


def ratio(numerator: list[float], denominator: list[float]) -> float | None:
    """
    The median of the per-round ratios when both paths have a sample in
    every round (each pair measured minutes apart at most, so a change of
    the machine's load between rounds cancels out), else the ratio of the
    medians; None without samples.
    """
    if len(numerator) == len(denominator) and all(denominator) and numerator:
        return statistics.median(n / d for n, d in zip(numerator, denominator))
    if numerator and denominator and statistics.median(denominator):
        return statistics.median(numerator) / statistics.median(denominator)
    return None


def summarize(samples: Samples, names: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """
    Median per harness, metric and path, and the balancer's ratios (see
    L{ratio}) to the peer, to direct, with its access log to without, and to
    the C{--before} balancer.
    """
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for harness, metrics in samples.items():
        table[harness] = {}
        for key, by_path in metrics.items():
            row: dict[str, float | None] = {p: statistics.median(v) if v else None for p, v in by_path.items()}
            for other in ("peer", "direct"):
                row[f"balancer/{other}"] = ratio(by_path["balancer"], by_path[other])
            if "balancer+log" in names:
                row["log/balancer"] = ratio(by_path["balancer+log"], by_path["balancer"])
            if "before" in names:
                row["balancer/before"] = ratio(by_path["balancer"], by_path["before"])
            table[harness][key] = row
    return table


def cell(value: float | None, ratio: bool = False) -> str:
    """A number of a table: ratios with two decimals, others with three significant digits."""
    if value is None:
        return "-"
    if ratio:
        return f"{value:.2f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def text_table(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """Rows aligned in columns, the first C{left} to the left, the others to the right, a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def render(
    table: dict[str, dict[str, dict[str, float | None]]], samples: Samples, options: Options, info: dict[str, object]
) -> str:
    """The tables as text (one per protocol and harness, then the harness comparison), the machine and versions."""
    names = path_names(options)
    lines: list[str] = []
    for harness in options.harnesses:
        lines += [harness.describe(), ""]
        for protocol in options.protocols:
            peer = {"haproxy": f"haproxy nbthread {options.workers}", "nginx": f"nginx stream x{options.workers}"}[
                PEERS[protocol]
            ]
            header = ("metric", "unit", "better", "direct", peer, "balancer", "bal/peer", "bal/direct")
            if options.access_log:
                header += ("bal+log", "log/bal")
            if options.before:
                header += ("before", "bal/before")
            rows = [header]
            for m in METRICS[protocol]:
                row = table[harness.name][m.key]
                cells = (
                    m.label, m.unit, "higher" if m.higher_is_better else "lower",
                    *(cell(row[p]) for p in names[:3]),
                    cell(row["balancer/peer"], True), cell(row["balancer/direct"], True),
                )
                if options.access_log:
                    cells += (cell(row["balancer+log"]), cell(row["log/balancer"], True))
                if options.before:
                    cells += (cell(row["before"]), cell(row["balancer/before"], True))
                rows.append(cells)
            lines += [f"{protocol.upper()} ({harness.name})", *text_table(rows, 3), ""]
    if len(options.harnesses) == 2:
        lines += harness_check(table, samples, options)
    lines += [
        f"median of {options.repeat} interleaved rounds (each: direct, peer, balancer in turn; ratios: "
        "median of the rounds' ratios), "
        f"{options.duration:g} s per client run, {IDLE_CONNECTIONS} idle connections; "
        f"{options.workers} balancer worker(s), HAProxy thread(s), nginx worker(s); access log "
        f"{'on in the bal+log column' if options.access_log else 'off'} (HAProxy: no log); all on 127.0.0.1",
    ]
    if options.before:
        lines.append(f"before: the balancer of {options.before}, measured in the same rounds")
    agreed = info.get("tls")
    if isinstance(agreed, dict) and agreed:
        lines.append(f"TLS: RSA-2048 certificate, {next(iter(agreed.values()))} on every path")
    lines.append("machine: " + ", ".join(f"{k} {v}" for k, v in info["machine"].items()))  # type: ignore[attr-defined]
    lines += [f"  {k}: {v}" for k, v in info["versions"].items()]  # type: ignore[attr-defined]
    return "\n".join(lines)


def spread(samples: dict[str, list[float]]) -> float | None:
    """How far the balancer-to-peer ratios of the rounds lie apart (largest over smallest, less 1): the noise floor."""
    balancer, peer = samples["balancer"], samples["peer"]
    if len(balancer) != len(peer) or len(balancer) < 2 or not all(peer):
        return None
    ratios = [b / p for b, p in zip(balancer, peer)]
    return max(ratios) / min(ratios) - 1 if min(ratios) else None


def harness_check(
    table: dict[str, dict[str, dict[str, float | None]]], samples: Samples, options: Options
) -> list[str]:
    """
    The throughput medians of the two harnesses side by side: alt/standard
    per path and for the balancer-to-peer ratio, flagged beyond 10%, beside
    the round-to-round spread of that ratio under each setting.
    """
    first, second = (h.name for h in options.harnesses)
    paths = path_names(options)[:3]

    def flagged(value: float | None) -> str:
        return cell(value, True) + ("*" if value is not None and abs(value - 1) > 0.10 else "")

    rows: list[tuple[str, ...]] = [
        ("throughput figure", "unit", *(f"{p} {second}/{first}" for p in paths), "ratio shift",
         f"spread {first}", f"spread {second}")
    ]
    worst = 0.0
    for protocol in options.protocols:
        for m in METRICS[protocol]:
            if not m.throughput:
                continue
            a, b = table[first][m.key], table[second][m.key]
            shifts = [b[p] / a[p] if a[p] and b[p] is not None else None for p in paths]  # type: ignore[operator]
            ra, rb = a["balancer/peer"], b["balancer/peer"]
            ratio_shift = rb / ra if ra and rb is not None else None
            if ratio_shift is not None:
                worst = max(worst, abs(ratio_shift - 1))
            noise = [spread(samples[h][m.key]) for h in (first, second)]
            rows.append((f"{protocol} {m.label}", m.unit, *map(flagged, shifts), flagged(ratio_shift),
                         *(f"{n:.0%}" if n is not None else "-" for n in noise)))
    return [
        f"harness independence ({second} against {first}; * beyond 10%; ratio shift: bal/peer {second} over "
        f"bal/peer {first}; spread: how far the rounds' bal/peer ratios lie apart under one setting)",
        *text_table(rows, 2),
        f"largest shift of a bal/peer ratio: {worst:.0%}",
        "",
    ]


def command_output(argv: list[str]) -> str:
    """First line that C{argv} prints (on stdout or stderr), or why it could not run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return ((done.stdout or done.stderr).strip().splitlines() or ["?"])[0]


def machine() -> dict[str, str]:
    """CPU count and model, kernel."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release()}


def versions(before: Path | None = None) -> dict[str, str]:
    """Versions of everything measured or measuring (C{before}: the source tree of C{--before})."""
    trees = {"balancer": REPO, **({"before": before} if before else {})}
    return {
        **{name: command_output(["git", "-C", str(tree), "describe", "--always", "--dirty"])
           for name, tree in trees.items()},
        "python": platform.python_version(),
        "twisted": command_output([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
        "haproxy": command_output(["haproxy", "-v"]),
        "nginx": command_output(["nginx", "-v"]),
        "openssl": command_output(["openssl", "version"]),
        "iperf3": command_output(["iperf3", "--version"]),
        "wrk": command_output(["wrk", "-v"]),
    }


def parse_options(argv: list[str] | None) -> tuple[Options, bool]:
    """The command line as L{Options} and whether to print JSON; a bad option exits with its message."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--only", default=",".join(PROTOCOLS),
                        help="protocols to measure, comma-separated, of tcp,tls,sni,udp (default all)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of measurements (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per client run (default 5)")
    parser.add_argument("--workers", type=int, default=1,
                        help="balancer worker processes, HAProxy threads, nginx stream workers (default 1)")
    parser.add_argument("--tls", choices=("1.2", "1.3"), default="1.2",
                        help="TLS version of every path: 1.2 pinned to ECDHE-RSA-AES128-GCM-SHA256 (default), "
                             "or 1.3 with OpenSSL's default suites")
    parser.add_argument("--harness", choices=tuple(SETTINGS), default="standard",
                        help="client parameters: standard, alt, or both (each figure under each, compared)")
    parser.add_argument("--access-log", action="store_true",
                        help="also measure a second balancer with its access log on (to a file)")
    parser.add_argument("--before", metavar="DIR", type=Path,
                        help="also measure the balancer of this source tree (an earlier checkout), for a "
                             "before/after in the same rounds")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.duration = 1, 2.0
    protocols = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        parser.error(f"--only: unknown protocol(s) {', '.join(unknown) or '(none given)'}; choose from tcp,tls,sni,udp")
    if args.repeat < 1 or args.duration <= 0 or not 1 <= args.workers <= 64:
        parser.error("--repeat must be at least 1, --duration positive and --workers from 1 to 64")
    if args.before is not None and not (args.before / "balancer" / "__init__.py").is_file():
        # Else the "before" twistd would import whichever balancer is installed.
        parser.error(f"--before {args.before}: not a source tree of the balancer (no balancer/__init__.py)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} (apt-get install haproxy iperf3 wrk nginx-light openssl)")
    if "udp" in protocols and not STREAM_MODULE.exists():
        parser.error(f"no {STREAM_MODULE}: apt-get install libnginx-mod-stream, or leave udp out of --only")
    ordered = [p for p in PROTOCOLS if p in protocols]
    options = Options(ordered, args.repeat, args.duration, args.workers, args.tls, SETTINGS[args.harness],
                      args.access_log, args.before.resolve() if args.before else None)
    return options, args.json


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print the tables (or JSON)."""
    options, as_json = parse_options(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Also when started with SIGINT ignored (as a shell's background job).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    info: dict[str, object] = {"machine": machine(), "versions": versions(options.before)}
    try:
        samples, agreed = run(options, lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    info["tls"] = agreed
    table = summarize(samples, path_names(options))
    if as_json:
        settings = {
            "protocols": options.protocols, "repeat": options.repeat, "duration": options.duration,
            "workers": options.workers, "tls": options.tls, "access_log": options.access_log,
            "before": str(options.before) if options.before else None,
            "idle_connections": IDLE_CONNECTIONS, "harnesses": [h.as_dict() for h in options.harnesses],
        }
        print(json.dumps({**info, "settings": settings, "samples": samples, "medians": table}, indent=2))
    else:
        print(render(table, samples, options, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
