"""
Network namespaces for tests run as root: each with a veth pair to the
host (host side 10.231.N.1/24, namespace side 10.231.N.2/24, a default
route through the host side), its loopback up, and a way to run a process
inside it.  Everything made is removed when the test ends.  N is picked
under a lock among the numbers no address, link or namespace on this host
uses, so parallel runs do not collide.  L{require_netns} skips a test
where namespaces cannot be made (not root, no C{ip}, EPERM), failing it
under C{CI=true}.

    require_netns()
    a = make_namespace(self)              # a.address "10.231.N.2", a.host_address "10.231.N.1"
    process = WatchedProcess(b"listening")
    reactor.spawnProcess(process, "ip", a.argv(sys.executable, "server.py"), env=...)
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from contextlib import contextmanager
from typing import Iterator, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.support.tools import unavailable

#: The first two bytes of every address made here.
NETWORK = "10.231"
#: Serialises picking a number and making the namespace between processes.
LOCK_PATH = "/tmp/balancer-test-netns.lock"
#: Seconds an C{ip} command may take.
IP_TIMEOUT = 10

_possible: str | None = None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """
    Run C{ip ARGS} (bounded by L{IP_TIMEOUT}).

    @raise RuntimeError: when it fails and C{check}, with its error output.
    """
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def why_not() -> str:
    """Why namespaces cannot be made here (one line), or "" when they can; found out once per process."""
    global _possible
    if _possible is None:
        _possible = _find_why_not()
    return _possible


def _find_why_not() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["sh", "-c", "command -v ip"], capture_output=True).returncode != 0:
        return "needs the ip tool (apt-get install iproute2), which is not on PATH"
    probe = f"balprobe{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return ""


def require_netns() -> None:
    """Skip the test (fail it with C{CI=true}) when network namespaces cannot be made here."""
    reason = why_not()
    if reason:
        unavailable(reason)


class Namespace:
    """
    A network namespace of a test, joined to the host by a veth pair.

    @ivar name: its name (C{ip netns exec NAME ...}).
    @ivar number: N in its addresses.
    @ivar address: its own address, 10.231.N.2.
    @ivar host_address: the host side's address, 10.231.N.1 (its default gateway).
    @ivar host_link: the host side's interface.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.name = f"balns{number}"
        self.address = f"{NETWORK}.{number}.2"
        self.host_address = f"{NETWORK}.{number}.1"
        self.host_link = f"balh{number}"
        self.inner_link = f"baln{number}"
        self.removed = False

    def argv(self, *argv: str) -> list[str]:
        """The command line that runs C{argv} inside the namespace (C{ip netns exec} execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def make(self) -> None:
        """Create the namespace, the veth pair, their addresses and routes."""
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
            ip("link", "set", self.inner_link, "netns", self.name)
            ip("addr", "add", f"{self.host_address}/24", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", self.inner_link)
            ip("-n", self.name, "link", "set", self.inner_link, "up")
            ip("-n", self.name, "link", "set", "lo", "up")
            ip("-n", self.name, "route", "add", "default", "via", self.host_address)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Remove the namespace and the host side of the pair (stop its processes first)."""
        if self.removed:
            return
        self.removed = True
        ip("netns", "del", self.name, check=False)
        ip("link", "del", self.host_link, check=False)


def numbers_in_use() -> set[int]:
    """The N of every 10.231.N address, C{bal*} link and C{balns*} namespace on this host."""
    used: set[int] = set()
    addresses = ip("-o", "addr", "show").stdout
    for word in addresses.split():
        if word.startswith(NETWORK + "."):
            parts = word.split(".")
            if len(parts) >= 3 and parts[2].isdigit():
                used.add(int(parts[2]))
    links = ip("-o", "link", "show").stdout
    namespaces = ip("netns", "list").stdout
    for text, prefixes in ((links, ("balh", "baln")), (namespaces, ("balns",))):
        for word in text.replace(":", " ").replace("@", " ").split():
            for prefix in prefixes:
                rest = word[len(prefix):]
                if word.startswith(prefix) and rest.isdigit():
                    used.add(int(rest))
    return used


@contextmanager
def numbers_locked() -> Iterator[None]:
    """Hold the lock under which numbers are taken (no other test run takes one meanwhile)."""
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def make_namespace(test: SynchronousTestCase) -> Namespace:
    """
    A new namespace for C{test}, removed when it ends (after the cleanups
    added later, such as stopping the processes run in it).

    @raise SkipTest: where namespaces cannot be made (see L{require_netns}).
    """
    require_netns()
    with numbers_locked():
        used = numbers_in_use()
        free = [n for n in range(1, 255) if n not in used]
        if not free:
            raise RuntimeError(f"no free {NETWORK}.N/24 network for a test namespace")
        namespace = Namespace(free[0])
        namespace.make()
    test.addCleanup(namespace.remove)
    return namespace


def make_namespaces(test: SynchronousTestCase, count: int) -> Sequence[Namespace]:
    """C{count} namespaces for C{test} (see L{make_namespace})."""
    return [make_namespace(test) for _ in range(count)]
