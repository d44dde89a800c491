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
instructions divided by C{--extra}.  The set-up it shares with
C{conn_cost.py} is C{bench/counting.py}.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import selectors
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from counting import (  # noqa: E402
    HOST, REPO, Batches, callgrind_instructions, engine_server, most_called, python_calls, serve, start_peer, stop,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n"


def backend() -> None:
    """Answer each request of each connection, keeping it open; until stdin closes."""

    def answer(sock: socket.socket, got: bytes, ended: bool) -> bytes | None:
        if ended:
            return None
        while REQUEST in got:
            got = got.replace(REQUEST, b"", 1)
            sock.sendall(ANSWER)
        return got

    serve(answer)


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

    peer = start_peer(__file__, "--backend")
    backend_port = int(peer.stdout.readline())  # type: ignore[union-attr]
    server = engine_server(reactor, backend_port)
    driver = start_peer(__file__, "--client", str(server.port), "--connections", str(args.connections))
    state: dict[str, Any] = {}
    profiler = cProfile.Profile() if args.profile else None

    def measure() -> None:
        state["cpu"] = resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.enable()
        batches.ask(args.messages)

    def measured() -> None:
        if profiler is not None:
            profiler.disable()
        before, after = state["cpu"], resource.getrusage(resource.RUSAGE_SELF)
        state["user"] = after.ru_utime - before.ru_utime
        state["system"] = after.ru_stime - before.ru_stime
        reactor.stop()  # type: ignore[attr-defined]

    batches = Batches(driver, [measure, measured])
    reactor.addReader(batches)  # type: ignore[attr-defined]
    batches.ask(args.warmup)
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
    n = args.messages
    assert server.counters.total_connections == args.connections, server.counters.total_connections
    print(f"messages: {n} over {args.connections} connections")
    print(f"CPU us per message, user, timed (noisy): {1e6 * state['user'] / n:.2f}")
    print(f"CPU us per message, system, timed (noisy): {1e6 * state['system'] / n:.2f}")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        print(f"python calls per message (cProfile): {python_calls(stats) / n:.2f}")
        if args.top:
            print("\n".join(most_called(stats, n, args.top)))
    stop(driver)
    server.stopService()
    stop(peer)


def instructions(messages: int, args: argparse.Namespace) -> int:
    """The instructions the balancer's process ran (under callgrind) for C{messages} messages."""
    return callgrind_instructions(
        __file__, "--messages", str(messages), "--warmup", str(args.warmup), "--connections", str(args.connections)
    )


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
