"""
Memory reactors for unit tests: listeners that record being closed, ports
that are taken, closings that wait for the test, and processes that are
recorded instead of started.
"""

from __future__ import annotations

import errno
from typing import Any, Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure


class RecordingPort:
    """A TCP listening port of L{ListeningReactor} that records whether it was closed."""

    def __init__(self, reactor: ListeningReactor, port: int, interface: str) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.stopped = False

    def getHost(self) -> IPv4Address:
        """Its address; port 0 stands for the port the kernel would pick, 40000."""
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.port or 40000)

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        self._reactor.closed.append(self.port)
        return self._reactor.closing(self.port)


class ListeningReactor(MemoryReactorClock):
    """
    A memory reactor whose TCP ports record closing (L{ports}, L{closed},
    L{listening}), and which refuses to listen on C{taken} ports as the
    kernel would (C{EADDRINUSE}).
    """

    def __init__(self, taken: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.taken = set(taken)
        self.ports: list[RecordingPort] = []
        self.closed: list[int] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> RecordingPort:
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        self.ports.append(RecordingPort(self, port, interface))
        return self.ports[-1]

    def closing(self, port: int) -> Deferred[None]:
        """How long closing the listener on C{port} takes: here, no time at all."""
        return succeed(None)

    def listening(self) -> list[int]:
        """Ports listened on and not closed since, in the order they were opened."""
        ports = [port for port, _, _, _ in self.tcpServers]
        for port in self.closed:
            ports.remove(port)
        return ports


class HeldPorts(ListeningReactor):
    """A L{ListeningReactor} whose listeners take until L{release} to close (a rebind in progress)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[None]] = []

    def closing(self, port: int) -> Deferred[None]:
        closing: Deferred[None] = Deferred()
        self.held.append(closing)
        return closing

    def release(self) -> None:
        """Every listener being closed is now closed."""
        held, self.held = self.held, []
        for closing in held:
            closing.callback(None)


class FakeProcess:
    """The transport of a process that never runs: what was written to its stdin, the signals it got."""

    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.written: list[bytes] = []
        self.signals: list[int | str] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def signalProcess(self, signum: int | str) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signum)

    def closeStdin(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass


class SpawningReactor(ListeningReactor):
    """A L{ListeningReactor} that records every process it is asked to start, and starts none."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, str] | None, FakeProcess]] = []

    def spawnProcess(self, processProtocol: Any, executable: str, args: Sequence[str] = (),
                     env: dict[str, str] | None = None, path: str | None = None, uid: int | None = None,
                     gid: int | None = None, usePTY: bool = False, childFDs: Any = None) -> FakeProcess:
        transport = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((processProtocol, list(args), env, transport))
        processProtocol.makeConnection(transport)
        return transport

    def argvs(self) -> list[list[str]]:
        """The argv of every process started, in order."""
        return [args for _, args, _, _ in self.spawned]

    def end(self, index: int, reason: Exception) -> None:
        """Process number C{index} (in spawn order) ends."""
        protocol, _, _, transport = self.spawned[index]
        transport.pid = None
        protocol.processEnded(Failure(reason))


class FakeUdpPort:
    """A UDP port of L{UdpReactor}: records where it sends, and whether it was closed."""

    def __init__(self, port: int, interface: str) -> None:
        self.port = port
        self.interface = interface
        self.sent: list[tuple[tuple[str, int] | None, bytes]] = []
        self.peer: tuple[str, int] | None = None
        self.closed = False

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def connect(self, host: str, port: int) -> None:
        self.peer = (host, port)

    def write(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        self.sent.append((addr or self.peer, data))

    def stopListening(self) -> None:
        self.closed = True


class UdpReactor(MemoryReactorClock):
    """
    A memory reactor with UDP: each C{listenUDP} is recorded in L{udpServers},
    gets a L{FakeUdpPort} (in L{udpPorts}) and connects its protocol to it, as
    a real reactor does; names resolve through C{names}.
    """

    def __init__(self, names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.names = dict(names or {})
        self.udpServers: list[tuple[int, Any, str, int]] = []
        self.udpPorts: list[FakeUdpPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUdpPort:
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        transport = FakeUdpPort(port, interface)
        self.udpPorts.append(transport)
        protocol.makeConnection(transport)
        return transport

    def resolve(self, name: str, timeout: Sequence[int] = (1, 3, 11, 45)) -> Deferred[str]:
        return succeed(self.names[name])

    @property
    def open(self) -> int:
        """How many UDP ports are open."""
        return sum(not port.closed for port in self.udpPorts)
