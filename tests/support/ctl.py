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
from twisted.python.failure import Failure

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


def run_ctl(api: int | str, *args: str, auth: tuple[str, str] | None = ("admin", "admin-pw"), stdin: bytes = b"",
            env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> Deferred[Ran]:
    """
    Run C{balancerctl --url URL [--user U --password P] ARGS} (as C{python
    -m balancer.ctl}); fires with its L{Ran} once it ends (or fails after
    C{timeout}, the process killed).

    @param api: the API's port on 127.0.0.1 (plain HTTP), or its URL.
    @param auth: the credentials given as options (None: none given).
    @param env: more environment variables.
    """
    url = api if isinstance(api, str) else f"http://127.0.0.1:{api}"
    argv = [sys.executable, "-m", "balancer.ctl", "--url", url]
    if auth is not None:
        argv += ["--user", auth[0], "--password", auth[1]]
    environment = {k: v for k, v in source_env().items() if not k.startswith("BALANCER_")}
    environment.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **(env or {}))
    collect = _Collect(stdin)
    process = reactor.spawnProcess(collect, argv[0], [*argv, *args], env=environment, path=ROOT)

    def kill(failure: Failure) -> Failure:
        if process.pid is not None:
            process.signalProcess("KILL")
        return failure

    return collect.done.addTimeout(timeout, reactor).addErrback(kill)

