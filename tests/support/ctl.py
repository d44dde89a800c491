"""
balancerctl under test: run C{python -m balancer.ctl ARGS} as a child
process (this checkout's code) against a balancer's API, with a bounded
wait, some standard input, and a given environment.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.support.paths import ROOT
from tests.support.processes import source_env

#: How long one balancerctl run may take, in seconds.
TIMEOUT = 60.0


class Ran:
    """
    One finished run: C{out} and C{err} (text) and its exit C{code}.
    """

    def __init__(self, out: bytes, err: bytes, code: int | None) -> None:
        self.out = out.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")
        self.code = code

    def __repr__(self) -> str:
        return f"Ran(code={self.code!r}, out={self.out!r}, err={self.err!r})"


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.done: Deferred[Ran] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.done.callback(Ran(self.out, self.err, getattr(reason.value, "exitCode", None)))


def run_ctl(api_port: int, *args: str, auth: tuple[str, str] | None = ("admin", "admin-pw"), stdin: bytes = b"",
            env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> Deferred[Ran]:
    """
    Run C{balancerctl --url http://127.0.0.1:API_PORT [--user U --password P] ARGS}
    (as C{python -m balancer.ctl}); fires with its L{Ran} once it ends (or fails after C{timeout}).

    @param auth: the credentials given as options (None: none given).
    @param env: more environment variables.
    """
    argv = [sys.executable, "-m", "balancer.ctl", "--url", f"http://127.0.0.1:{api_port}"]
    if auth is not None:
        argv += ["--user", auth[0], "--password", auth[1]]
    environment = {k: v for k, v in source_env().items() if not k.startswith("BALANCER_")}
    environment.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **(env or {}))
    collect = _Collect(stdin)
    reactor.spawnProcess(collect, argv[0], [*argv, *args], env=environment, path=ROOT)
    return collect.done.addTimeout(timeout, reactor)

