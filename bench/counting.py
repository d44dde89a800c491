"""
What the counting probes (C{bench/conn_cost.py}, per new connection, and
C{bench/message_cost.py}, per message on kept-alive connections) share: a
server of this working tree's balancer on the relay engine in this
process, in front of a backend process; the client process driven in
batches; the instructions of a run under callgrind; the summary of a
cProfile.

Each probe runs itself again as its backend (C{--backend}) and its client
(C{--client PORT}); the client makes the work of each count written to its
stdin and prints "done" after it.  To measure an older checkout, copy both
the probe and this module into its C{bench/}.
"""

from __future__ import annotations

import os
import pstats
import selectors
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def serve(answer: Callable[[socket.socket, bytes, bool], bytes | None]) -> None:
    """
    Be the backend: listen on a free port of L{HOST} (printed first), and
    give each connection's bytes so far, and whether its input ended, to
    C{answer}, which writes what it answers and returns the bytes to keep
    (or C{None}: the connection is closed); until stdin closes.
    """
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
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    got[conn] = b""
                    selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            kept = answer(sock, got[sock] + data, not data)
            if kept is None:
                selector.unregister(sock)
                del got[sock]
                sock.close()
            else:
                got[sock] = kept


def start_peer(script: str, *args: str) -> subprocess.Popen[str]:
    """C{script} run again with C{args} (as the backend or the client), its stdin and stdout piped."""
    return subprocess.Popen([sys.executable, script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def engine_server(reactor: Any, backend_port: int, balance: str = "roundrobin", finished: Any = None) -> Any:
    """
    A started server of the balancer, on port 0 of L{HOST}, on the relay
    engine, in front of the backend on C{backend_port}; C{finished}, the
    C{FinishedConnections} it publishes to (a new one by default).
    """
    from balancer.config.addresses import HostPort, parse_backend_line
    from balancer.config.schema import DiscoveryConfig, ServerConfig
    from balancer.proxy.engine.engine import make_engine
    from balancer.proxy.engine.path import EnginePath
    from balancer.proxy.paths import DataPaths
    from balancer.server_service import ServerService
    from balancer.stats import RateClock

    engine = make_engine(reactor)
    assert engine is not None, "no relay engine on this platform"
    config = ServerConfig(
        bind=HostPort(HOST, 0),
        balance=balance,
        discovery=DiscoveryConfig(kind="static", static_list=(parse_backend_line(f"{HOST}:{backend_port}"),)),
    )
    options = {} if finished is None else {"finished": finished}
    server = ServerService("bench", config, reactor, RateClock(reactor), paths=DataPaths(reactor, engine), **options)
    assert isinstance(server.path, EnginePath)
    server.startService()
    return server


class Batches:
    """
    The client process's batches, as a reader of the reactor: L{ask} for a
    batch of work; each "done" it prints runs the next of C{steps}, through
    C{then} (which may wait before calling it).
    """

    def __init__(
        self, driver: subprocess.Popen[str], steps: list[Callable[[], None]],
        then: Callable[[Callable[[], None]], None] = lambda step: step(),
    ) -> None:
        assert driver.stdin is not None and driver.stdout is not None
        self._input = driver.stdin
        self._output = driver.stdout
        self._steps = steps
        self._then = then

    def ask(self, count: int) -> None:
        """Ask the client for a batch of C{count}."""
        self._input.write(f"{count}\n")
        self._input.flush()

    def fileno(self) -> int:
        """The client's output."""
        return self._output.fileno()

    def doRead(self) -> None:
        """A batch is done: on to the next step."""
        self._output.readline()
        self._then(self._steps.pop(0))

    def logPrefix(self) -> str:
        """How the reactor's log names it."""
        return "client"

    def connectionLost(self, reason: Any) -> None:
        """The client's output closed (it is done)."""


def stop(*processes: subprocess.Popen[str]) -> None:
    """End the client and backend processes (each stops when its stdin closes), in turn."""
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
        process.wait()


def callgrind_instructions(script: str, *args: str) -> int:
    """The instructions C{script} run with C{args} made under callgrind (its own process only)."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, script, *args],
        capture_output=True, text=True, check=True,
    )
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1])
    raise SystemExit(f"no instruction count in callgrind's output:\n{done.stderr}")


def python_calls(stats: pstats.Stats) -> int:
    """The Python function calls a profile counted."""
    return sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]


def most_called(stats: pstats.Stats, per: int, top: int) -> list[str]:
    """The C{top} functions called most, as lines: calls per unit (of C{per} units), then where."""
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][1])[:top]  # type: ignore[attr-defined]
    return [
        f"  {ncalls / per:7.2f}  {os.path.relpath(path, REPO) if path.startswith('/') else path}:{line}({name})"
        for (path, line, name), (_, ncalls, *_rest) in rows
    ]
