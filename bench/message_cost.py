"""
The work the balancer does per request and answer on a kept-alive plain
TCP connection, counted rather than timed (the companion of
C{bench/conn_cost.py}, which counts the work per new connection).

Run from the repository::

    /work/main/.venv/bin/python bench/message_cost.py [--messages 20000]
        [--connections 50] [--profile] [--top 25]
    /work/main/.venv/bin/python bench/message_cost.py --callgrind

It runs one server of this working tree's balancer in this process, on the
relay engine, in front of a backend process (this script with
C{--backend}) that answers each request and keeps the connection open, as
an HTTP server does with keep-alive.  A client process (C{--client}) opens
C{--connections} connections through the balancer, then sends requests on
all of them at once, each connection its next request once it read its
answer (checked), until C{--messages} answers came back (as C{wrk} does).
A warm-up of C{--warmup} messages comes first; the connections stay open
throughout, so no connection is made or closed while measuring.

It prints, per message (a request and its answer): with C{--profile}, the
Python function calls in the balancer's process (C{cProfile}) and the
functions called most; the CPU time of the balancer's process (timed, so
as noisy as the machine).  With C{--callgrind} it runs itself twice under
C{valgrind --tool=callgrind} (the balancer's process only), with
C{--messages} and with C{--extra} more, and prints the difference of the
instructions divided by C{--extra}.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import selectors
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n"


def backend() -> None:
    """Answer each request of each connection, keeping it open; until stdin closes."""
    selector = selectors.DefaultSelector()
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1024)
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    print(listener.getsockname()[1], flush=True)
    got: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock: Any = key.fileobj
            if sock is sys.stdin:
                return
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                got[conn] = b""
                selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(sock)
                del got[sock]
                sock.close()
                continue
            got[sock] += data
            while REQUEST in got[sock]:
                got[sock] = got[sock].replace(REQUEST, b"", 1)
                sock.sendall(ANSWER)


def client(port: int, connections: int) -> None:
    """
    Open C{connections} connections; for each count read from stdin, make
    that many exchanges over them; print "done" after each batch.  Closes
    them when stdin closes.
    """
    socks = [socket.create_connection((HOST, port)) for _ in range(connections)]
    for sock in socks:
        sock.setblocking(False)
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    for line in sys.stdin:
        count = int(line)
        sent = finished = 0
        answers = {sock: b"" for sock in socks}
        for sock in socks[:count]:
            sock.sendall(REQUEST)
            sent += 1
        while finished < count:
            for key, _ in selector.select():
                sock = key.fileobj  # type: ignore[assignment]
                data = sock.recv(65536)
                if not data:
                    raise SystemExit("connection closed")
                answers[sock] += data
                if len(answers[sock]) < len(ANSWER):
                    continue
                if answers[sock] != ANSWER:
                    raise SystemExit("wrong answer")
                answers[sock] = b""
                finished += 1
                if sent < count:
                    sock.sendall(REQUEST)
                    sent += 1
        print("done", flush=True)
    for sock in socks:
        sock.close()


def balancer(args: argparse.Namespace) -> None:
    """Run the balancer here, drive the client, print the counts."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from balancer.config.addresses import HostPort, parse_backend_line
    from balancer.config.schema import DiscoveryConfig, ServerConfig
    from balancer.proxy.engine.engine import make_engine
    from balancer.proxy.engine.path import EnginePath
    from balancer.proxy.paths import DataPaths
    from balancer.server_service import ServerService
    from balancer.stats import RateClock

    peer = subprocess.Popen(
        [sys.executable, __file__, "--backend"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    backend_port = int(peer.stdout.readline())  # type: ignore[union-attr]
    engine = make_engine(reactor)
    assert engine is not None, "no relay engine on this platform"
    config = ServerConfig(
        bind=HostPort(HOST, 0),
        discovery=DiscoveryConfig(kind="static", static_list=(parse_backend_line(f"{HOST}:{backend_port}"),)),
    )
    server = ServerService("bench", config, reactor, RateClock(reactor), paths=DataPaths(reactor, engine))
    assert isinstance(server.path, EnginePath)
    server.startService()
    driver = subprocess.Popen(
        [sys.executable, __file__, "--client", str(server.port), "--connections", str(args.connections)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    out = driver.stdout
    assert out is not None
    state: dict[str, Any] = {}
    profiler = cProfile.Profile() if args.profile else None

    def ask(count: int) -> None:
        driver.stdin.write(f"{count}\n")  # type: ignore[union-attr]
        driver.stdin.flush()  # type: ignore[union-attr]

    def measure() -> None:
        state["cpu"] = resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.enable()
        ask(args.messages)

    def measured() -> None:
        if profiler is not None:
            profiler.disable()
        before, after = state["cpu"], resource.getrusage(resource.RUSAGE_SELF)
        state["user"] = after.ru_utime - before.ru_utime
        state["system"] = after.ru_stime - before.ru_stime
        reactor.stop()  # type: ignore[attr-defined]

    steps = [measure, measured]

    class Done:
        """Reads the client's "done" lines (one per batch)."""

        def fileno(self) -> int:
            return out.fileno()  # type: ignore[union-attr]

        def doRead(self) -> None:
            out.readline()  # type: ignore[union-attr]
            steps.pop(0)()

        def logPrefix(self) -> str:
            return "client"

        def connectionLost(self, reason: Any) -> None:
            pass

    reactor.addReader(Done())  # type: ignore[attr-defined]
    ask(args.warmup)
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
    n = args.messages
    assert server.counters.total_connections == args.connections, server.counters.total_connections
    print(f"messages: {n} over {args.connections} connections")
    print(f"CPU us per message, user, timed (noisy): {1e6 * state['user'] / n:.2f}")
    print(f"CPU us per message, system, timed (noisy): {1e6 * state['system'] / n:.2f}")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"python calls per message (cProfile): {calls / n:.2f}")
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])[: args.top]  # type: ignore[attr-defined]
        for (path, line, name), (_, ncalls, *_rest) in rows:
            print(f"  {ncalls / n:7.2f}  {os.path.relpath(path, REPO) if path.startswith('/') else path}:{line}({name})")
    driver.stdin.close()  # type: ignore[union-attr]
    driver.wait()
    server.stopService()
    peer.stdin.close()  # type: ignore[union-attr]
    peer.wait()


def instructions(messages: int, args: argparse.Namespace) -> int:
    """The instructions the balancer's process ran (under callgrind) for C{messages} messages."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--messages", str(messages), "--warmup", str(args.warmup), "--connections", str(args.connections)],
        capture_output=True, text=True, check=True,
    )
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1])
    raise SystemExit(f"no instruction count in callgrind's output:\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="count Python calls with cProfile")
    parser.add_argument("--top", type=int, default=0, help="with --profile, list the N functions called most")
    parser.add_argument("--callgrind", action="store_true", help="count instructions per message with callgrind")
    parser.add_argument("--extra", type=int, default=10000, help="with --callgrind, the messages of the difference")
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        backend()
    elif args.client:
        client(args.client, args.connections)
    elif args.callgrind:
        fewer = instructions(args.messages, args)
        more = instructions(args.messages + args.extra, args)
        print(f"instructions per message (callgrind): {(more - fewer) / args.extra:.0f}")
    else:
        sys.path.insert(0, str(REPO))
        balancer(args)


if __name__ == "__main__":
    main()
