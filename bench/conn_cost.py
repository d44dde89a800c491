"""
The work the balancer does per new plain TCP connection, counted rather
than timed, so that a busy shared machine does not change the figures.

Run from the repository::

    /work/main/.venv/bin/python bench/conn_cost.py [--connections 2000]
        [--concurrency 16] [--profile] [--top 25]
    /work/main/.venv/bin/python bench/conn_cost.py --callgrind
    /work/main/.venv/bin/python bench/conn_cost.py --callgrind --access-log text   # or json

It runs one server of this working tree's balancer in this process, on the
relay engine (the default path for plain TCP), in front of a backend
process (this script with C{--backend}) that reads a request, answers
and closes, as an HTTP server does with C{Connection: close}.  A client
process (C{--client}) then makes C{--connections} connections,
C{--concurrency} at a time: each sends a request, reads the answer to its
end (checked) and closes.  A warm-up of C{--warmup} connections comes first.

It prints, per measured connection:

 - with C{--profile}, the Python function calls in the balancer's process
   (C{cProfile}), and the functions called most;
 - the objects the cyclic garbage collector found unreachable
   (C{gc.collect()} after the connections, with automatic collection off
   meanwhile unless C{--collector-on}): zero when every relay is freed by
   reference counting;
 - the collections the collector would have run at its thresholds;
 - the CPU time of the balancer's process (user and system): timed, so
   as noisy as the machine.

With C{--callgrind} it runs itself twice under C{valgrind --tool=callgrind}
(which counts the instructions of the balancer's process only, not the
client's or the backend's), with C{--connections} and with 200 more, and
prints the difference of the instructions divided by 200: the start and the
end cancel out.  Callgrind slows Python about fifty times: a run takes a
minute or so.

With C{--access-log text} or C{json} the balancer logs as twistd sets it
up (L{balancer.logs.application_log} as the global log's observer,
C{[logging] output} a temporary file, level info) and writes an access
line per connection there (checked: one per connection): the difference
with a run without it is the access log's cost in service.  Run on an
older checkout (copy this script and C{bench/counting.py} into it), it
measures that checkout's access log: before its own writer, the lines were
log events.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import resource
import selectors
import shutil
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from counting import (  # noqa: E402
    HOST, REPO, Batches, callgrind_instructions, engine_server, most_called, python_calls, serve, start_peer, stop,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n"


def backend() -> None:
    """Answer each connection's request, then close it; until stdin closes."""

    def answer(sock: socket.socket, got: bytes, ended: bool) -> bytes | None:
        if ended or got.endswith(b"\r\n\r\n"):
            if not ended:
                sock.send(ANSWER)
            return None
        return got

    serve(answer)


def client(port: int, concurrency: int) -> None:
    """For each count read from stdin, make that many connections; print "done" after each batch."""
    for line in sys.stdin:
        count = int(line)
        selector = selectors.DefaultSelector()
        started = 0
        finished = 0
        answers: dict[socket.socket, bytes] = {}

        def start() -> None:
            nonlocal started
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, port))
            answers[sock] = b""
            selector.register(sock, selectors.EVENT_WRITE)
            started += 1

        for _ in range(min(concurrency, count)):
            start()
        while finished < count:
            for key, events in selector.select():
                sock: Any = key.fileobj
                if events & selectors.EVENT_WRITE:
                    sock.send(REQUEST)
                    selector.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(65536)
                if data:
                    answers[sock] += data
                    continue
                if answers.pop(sock) != ANSWER:
                    raise SystemExit("wrong answer")
                selector.unregister(sock)
                sock.close()
                finished += 1
                if started < count:
                    start()
        selector.close()
        print("done", flush=True)


def balancer(args: argparse.Namespace) -> None:
    """Run the balancer here, drive the client, print the counts."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    peer = start_peer(__file__, "--backend")
    backend_port = int(peer.stdout.readline())  # type: ignore[union-attr]
    finished, access_file = access_log(args.access_log)
    server = engine_server(reactor, backend_port, args.balance, finished)
    driver = start_peer(__file__, "--client", str(server.port), "--concurrency", str(args.concurrency))
    results: dict[str, Any] = {}
    n = args.connections
    state: dict[str, Any] = {}

    def settled(then: Any) -> None:
        """Call C{then} once the relays have ended."""
        if server.relays:
            reactor.callLater(0.005, settled, then)  # type: ignore[attr-defined]
        else:
            then()

    def measure() -> None:
        gc.collect()
        state["thresholds"] = gc.get_threshold()
        if not args.collector_on:
            gc.disable()
        state["before"] = gc.get_count()
        state["collections"] = [0, 0, 0]

        def counted(phase: str, info: dict[str, int]) -> None:
            if phase == "stop":
                state["collections"][info["generation"]] += 1

        gc.callbacks.append(counted)
        state["cpu"] = resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.enable()
        batches.ask(n)

    def measured() -> None:
        if profiler is not None:
            profiler.disable()
        before, after = state["cpu"], resource.getrusage(resource.RUSAGE_SELF)
        state["user"] = after.ru_utime - before.ru_utime
        state["system"] = after.ru_stime - before.ru_stime
        reactor.stop()  # type: ignore[attr-defined]

    profiler = cProfile.Profile() if args.profile else None
    batches = Batches(driver, [measure, measured], settled)
    reactor.addReader(batches)  # type: ignore[attr-defined]
    batches.ask(args.warmup)
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
    counts_before, thresholds = state["before"], state["thresholds"]
    allocated = gc.get_count()[0] - counts_before[0]
    if args.garbage:
        gc.set_debug(gc.DEBUG_SAVEALL)
    unreachable = gc.collect()
    gc.set_debug(0)
    if args.garbage:
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
        gc.garbage.clear()
        for kind, count in kinds.most_common():
            print(f"  garbage per connection: {count / n:6.2f} {kind}")
    gc.enable()
    results["connections"] = n
    results["collections run (generations 0, 1, 2)"] = " ".join(map(str, state["collections"]))
    results["CPU us per connection, user, timed (noisy)"] = 1e6 * state["user"] / n
    results["CPU us per connection, system, timed (noisy)"] = 1e6 * state["system"] / n
    results["unreachable objects per connection (gc.collect)"] = unreachable / n
    results["net container allocations per connection (gen0 count)"] = allocated / n
    results["gen0 collections per 1000 connections at threshold %d" % thresholds[0]] = 1000 * allocated / n / thresholds[0]
    total_connections = server.counters.total_connections
    assert total_connections == args.warmup + n, total_connections
    if access_file is not None:
        with open(access_file, encoding="utf-8") as f:
            lines = sum(1 for line in f if "balancer.access" in line)
        assert lines == total_connections, f"{lines} access lines for {total_connections} connections"
        results["access lines written"] = lines
        shutil.rmtree(os.path.dirname(access_file))
    if profiler is not None:
        stats = pstats.Stats(profiler)
        if args.stats:
            stats.dump_stats(args.stats)
        results["python calls per connection (cProfile)"] = python_calls(stats) / n
    for key, value in results.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    if profiler is not None and args.top:
        print("\n".join(most_called(stats, n, args.top)))
    stop(driver)
    server.stopService()
    stop(peer)


def access_log(format: str | None) -> tuple[Any, str | None]:
    """
    The balancer's C{FinishedConnections}, with the access log in C{format}
    written to a temporary file as in service, and that file's path (none
    without C{format}).
    """
    from twisted.logger import globalLogBeginner

    from balancer.accesslog import start_access_log
    from balancer.config.schema import LoggingConfig
    from balancer.logs import TwistdLogging, application_log
    from balancer.proxy.finished import FinishedConnections

    finished = FinishedConnections()
    if format is None:
        return finished, None
    path = os.path.join(tempfile.mkdtemp(prefix="conn-cost-"), "balancer.log")
    logging = LoggingConfig(format=format, output=path)
    log = application_log(logging, TwistdLogging())
    globalLogBeginner.beginLoggingTo([log.observer], redirectStandardIO=False)
    # Before the access log's own writer there was no destination to give: its lines were log events.
    destination = getattr(log, "access", None)
    start_access_log(logging, finished, *([destination] if destination is not None else []))
    return finished, path


def instructions(connections: int, args: argparse.Namespace) -> int:
    """The instructions the balancer's process ran (under callgrind) for C{connections} connections."""
    return callgrind_instructions(
        __file__, "--connections", str(connections), "--warmup", str(args.warmup),
        "--concurrency", str(args.concurrency), "--balance", args.balance,
        *(["--collector-on"] if args.collector_on else []),
        *(["--access-log", args.access_log] if args.access_log else []),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--balance", default="roundrobin")
    parser.add_argument("--profile", action="store_true", help="count Python calls with cProfile")
    parser.add_argument("--top", type=int, default=0, help="with --profile, list the N functions called most")
    parser.add_argument("--stats", metavar="FILE", help="with --profile, write the profile there (pstats)")
    parser.add_argument("--collector-on", action="store_true",
                        help="leave the cyclic collector on at its thresholds (as in service) while measuring")
    parser.add_argument("--garbage", action="store_true", help="list the kinds of objects only the cyclic collector freed")
    parser.add_argument("--callgrind", action="store_true", help="count instructions per connection with callgrind")
    parser.add_argument("--access-log", choices=("text", "json"),
                        help="write an access line per connection in this format to a temporary file, as in service")
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        backend()
    elif args.client:
        client(args.client, args.concurrency)
    elif args.callgrind:
        extra = 1000
        fewer = instructions(args.connections, args)
        more = instructions(args.connections + extra, args)
        print(f"instructions per connection (callgrind): {(more - fewer) / extra:.0f}")
    else:
        sys.path.insert(0, str(REPO))
        balancer(args)


if __name__ == "__main__":
    main()
