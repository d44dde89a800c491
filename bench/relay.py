"""
The TCP relay's own benchmark: bulk throughput and new connections per second
through this balancer, against a direct connection, on loopback.  Needs
nothing but this repository's Python environment.

Run from the repository::

    /work/venv/bin/python bench/relay.py [--bytes 1024] [--seconds 15]
        [--connections 20000] [--concurrency 4] [--no-access-log]

It starts, on 127.0.0.1 and on ports the kernel picks:

 - a backend process (this script with C{--backend}): a sink that reads a
   connection to its end and answers with the number of bytes it read, and an
   echo server; a thread per connection, blocking sockets;
 - the balancer from this working tree, as an operator runs it
   (C{twistd -n --pidfile= balancer --config=...}) with two servers, C{sink}
   and C{echo}, each in front of one of those.

Then it measures each figure directly and through the balancer:

 - bulk: one connection sends C{--bytes} MiB (or what it can in C{--seconds}),
   shuts down its write side and waits for the sink's count, which must match;
 - connections/s: C{--concurrency} worker processes each connect, send 64
   bytes, shut down writing, read the echo to its end (it must match) and
   close, for C{--seconds} or until C{--connections} in all.

It prints a table with the balancer's ratio to the direct figure, and stops
everything it started, by pid, when done or interrupted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import re
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from processes import read_lines, stop

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BLOCK = 1 << 20
REQUEST = b"r" * 64
START_TIMEOUT = 30.0

CONFIG = """\
[servers.sink]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.sink.discovery]
kind = "static"
static_list = ["127.0.0.1:{sink}"]

[servers.echo]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.echo.discovery]
kind = "static"
static_list = ["127.0.0.1:{echo}"]
"""


# The backend process


class _Sink(socketserver.BaseRequestHandler):
    """Reads to the end of input, then answers with the count (8 bytes, big-endian)."""

    def handle(self) -> None:
        buffer = bytearray(BLOCK)
        total = 0
        while n := self.request.recv_into(buffer):
            total += n
        self.request.sendall(total.to_bytes(8, "big"))


class _Echo(socketserver.BaseRequestHandler):
    """Echoes until the end of input, then closes."""

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 1024


def serve_backends() -> None:
    """Run the sink and the echo server; print their ports; serve until killed."""
    servers = [_Server((HOST, 0), handler) for handler in (_Sink, _Echo)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(" ".join(str(s.server_address[1]) for s in servers), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


# Clients


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def bulk(port: int, total: int, seconds: float) -> tuple[int, float]:
    """Send up to C{total} bytes (for at most C{seconds}) to the sink; returns (bytes, elapsed)."""
    block = memoryview(os.urandom(BLOCK))
    with socket.create_connection((HOST, port)) as sock:
        start = time.perf_counter()
        deadline = start + seconds
        sent = 0
        while sent < total and time.perf_counter() < deadline:
            size = min(BLOCK, total - sent)
            sock.sendall(block[:size])
            sent += size
        sock.shutdown(socket.SHUT_WR)
        answer = _recv_all(sock)
        elapsed = time.perf_counter() - start
    if int.from_bytes(answer, "big") != sent:
        raise RuntimeError(f"the sink counted {int.from_bytes(answer, 'big')} bytes of {sent}")
    return sent, elapsed


def _churn(port: int, seconds: float, limit: int) -> tuple[int, int]:
    """One worker: short request/response connections; returns (done, wrong answers)."""
    deadline = time.perf_counter() + seconds
    done = wrong = 0
    while done < limit and time.perf_counter() < deadline:
        with socket.create_connection((HOST, port)) as sock:
            sock.sendall(REQUEST)
            sock.shutdown(socket.SHUT_WR)
            wrong += _recv_all(sock) != REQUEST
        done += 1
    return done, wrong


def churn(port: int, seconds: float, limit: int, concurrency: int) -> tuple[int, float]:
    """C{concurrency} processes of L{_churn}; returns (connections, elapsed)."""
    share = -(-limit // concurrency)
    with multiprocessing.get_context("fork").Pool(concurrency) as pool:
        start = time.perf_counter()
        results = pool.starmap(_churn, [(port, seconds, share)] * concurrency)
        elapsed = time.perf_counter() - start
    done = sum(r[0] for r in results)
    wrong = sum(r[1] for r in results)
    if wrong:
        raise RuntimeError(f"{wrong} of {done} echoes came back wrong")
    return done, elapsed


# Starting and stopping what is measured


def start_backends() -> tuple[subprocess.Popen[str], int, int]:
    """The backend process and its sink and echo ports."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--backend"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    sink, echo = (int(p) for p in process.stdout.readline().split())  # type: ignore[union-attr]
    return process, sink, echo


def start_balancer(directory: str, sink: int, echo: int, access_log: bool = True) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """twistd with servers "sink" and "echo" (and its access log unless told); returns it and the ports they listen on."""
    config = os.path.join(directory, "bench.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG.format(sink=sink, echo=echo) + ("" if access_log else "[logging]\naccess_log = false\n"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "balancer", "--config", config],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines = read_lines(process.stdout)
    ports: dict[str, int] = {}
    deadline = time.monotonic() + START_TIMEOUT
    seen = []
    while len(ports) < 2:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError("the balancer did not start:\n" + "".join(seen)) from None
        seen.append(line)
        match = re.search(r"(sink|echo): listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            ports[match.group(1)] = int(match.group(2))
    return process, ports




# The run


def rows(args: argparse.Namespace, direct: dict[str, int], balanced: dict[str, int]) -> Iterator[tuple[str, ...]]:
    """Measure each figure both ways; yield table rows."""
    total = args.bytes << 20
    for name, ports in (("direct", direct), ("balancer", balanced)):
        bulk(ports["sink"], BLOCK, args.seconds)  # warm up
        _churn(ports["echo"], args.seconds, 10)
    results: dict[str, dict[str, tuple[int, float]]] = {"bulk": {}, "conn": {}}
    for name, ports in (("direct", direct), ("balancer", balanced)):
        results["bulk"][name] = bulk(ports["sink"], total, args.seconds)
        results["conn"][name] = churn(ports["echo"], args.seconds, args.connections, args.concurrency)
    for key, label, unit in (("bulk", "bulk MB/s", 1 << 20), ("conn", "connections/s", 1)):
        d_amount, d_time = results[key]["direct"]
        b_amount, b_time = results[key]["balancer"]
        d_rate, b_rate = d_amount / unit / d_time, b_amount / unit / b_time
        yield (
            label,
            f"{d_rate:,.0f}",
            f"{b_rate:,.0f}",
            f"{b_rate / d_rate:.2f}",
            f"{d_amount / unit:,.0f} in {d_time:.2f}s",
            f"{b_amount / unit:,.0f} in {b_time:.2f}s",
        )


def main() -> None:
    """Parse the options, start the peers, measure, print, stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=1024, help="MiB to send in the bulk test (default 1024)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit of each measurement (default 15)")
    parser.add_argument("--connections", type=int, default=20000, help="connections per run at most (default 20000)")
    parser.add_argument("--concurrency", type=int, default=4, help="client processes for connections/s (default 4)")
    parser.add_argument("--no-access-log", action="store_true", help="run the balancer with [logging] access_log = false")
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        serve_backends()
        return
    started: list[subprocess.Popen[str]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        backends, sink, echo = start_backends()
        started.append(backends)
        with tempfile.TemporaryDirectory() as directory:
            balancer, ports = start_balancer(directory, sink, echo, access_log=not args.no_access_log)
            started.append(balancer)
            table = list(rows(args, {"sink": sink, "echo": echo}, ports))
    finally:
        for process in reversed(started):
            stop(process)
    print(f"# bench/relay.py on {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}")
    print(f"# access log {'off' if args.no_access_log else 'on'}; bulk: 1 connection, up to {args.bytes} MiB; connections/s: {args.concurrency} client processes, "
          f"64-byte echo, up to {args.connections} connections; each run at most {args.seconds:g}s")
    header = ("figure", "direct", "balancer", "ratio", "direct moved", "balancer moved")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        cells = [cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
