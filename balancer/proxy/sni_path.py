"""
L{SniEnginePath}: SNI routing on the relay engine (docs/architecture.md).

A client routed by the server name of its ClientHello
(L{balancer.proxy.sni}) is read before it has a backend, which a plain TCP
client on the engine never is.  On this path, its first bytes are read
through Python (L{FirstBytes}, until its side has a whole hello), then the
backend is connected on the engine, the bytes read are written to it
first, ahead of the rest, and from there on the two sockets are spliced in
the kernel as any plain TCP relay's.  Endings, counting, timeouts and the
PROXY header are those of the engine path.

A data path that reads a client's first bytes only when asked provides
L{IReadsFirst}; Twisted's transports read as soon as they connect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Interface, implementer

from balancer.proxy.datapath import IDataPath
from balancer.proxy.engine.path import EnginePath

if TYPE_CHECKING:
    from balancer.proxy.tcp import BackendSide, ClientSide, Relay

#: The most bytes one read of a client's first bytes takes (a ClientHello
#: fits in one TLS record: 16 KiB and a 5-byte header).
FIRST_READ_SIZE = (1 << 14) + 5

#: How many reads of first bytes one event allows before the others have their turn.
FIRST_READS_PER_EVENT = 16


class IReadsFirst(Interface):
    """A data path whose accepted clients are not read until asked (the relay engine)."""

    def read_first(client: ClientSide) -> FirstBytes:
        """
        Read C{client}'s connection into its C{dataReceived} (its end of
        stream into C{readConnectionLost}) until the returned reader is
        stopped.
        """


class FirstBytes:
    """
    Reads an engine client's socket into its protocol before the relay is
    joined, until L{stop}ped or the connection is gone; a socket that fails
    is reset (its protocol hears of the loss as from a reset).
    """

    def __init__(self, engine: Any, client: ClientSide) -> None:
        self._engine = engine
        self._protocol = client
        self._transport = client.transport
        self._socket = self._transport.getHandle()
        self._fd: int = self._transport.fileno()
        self._active = True
        engine.addReader(self)

    @property
    def active(self) -> bool:
        """Whether it still reads."""
        return self._active

    def stop(self) -> None:
        """
        Read no more (bytes left in the socket stay there, for the splice).

        A socket closed meanwhile (a reset transport closes it at once and
        tells its protocol a turn later) already left the engine, and its
        descriptor may be a new socket's by now: that one is left alone.
        """
        if self._active:
            self._active = False
            if self._socket.fileno() == self._fd:
                self._engine.removeReader(self)

    def fileno(self) -> int:
        """The client socket's file descriptor."""
        return self._fd

    def logPrefix(self) -> str:
        """How the log names this reader."""
        return f"first bytes of socket {self._fd}"

    def doRead(self) -> None:
        """Hand what the socket has to the protocol, until it has no more, ends, or reading stops."""
        recv = self._socket.recv
        for _ in range(FIRST_READS_PER_EVENT):
            if not self._active:
                return
            try:
                data = recv(FIRST_READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.connectionLost(None)
                return
            if not data:
                self.stop()
                self._protocol.readConnectionLost()
                return
            self._protocol.dataReceived(data)
        if self._active:
            self._engine.read_again(self)

    def connectionLost(self, reason: Any) -> None:
        """Reading failed: reset the connection (the protocol hears of it as of a reset)."""
        self.stop()
        self._transport.abortConnection()


@implementer(IDataPath, IReadsFirst)
class SniEnginePath(EnginePath):
    """
    The relay engine, for clients routed by the SNI of their ClientHello:
    their first bytes are read through Python, the rest spliced.
    """

    def read_first(self, client: ClientSide) -> FirstBytes:
        """Read C{client}'s first bytes into its protocol (L{FirstBytes})."""
        return FirstBytes(self.engine, client)

    def join(self, relay: Relay, client: ClientSide, backend: BackendSide) -> None:
        """
        Write the bytes read from the client first (after a PROXY header,
        written when the backend connected), counted as sent; then splice.
        """
        early, relay.early_data = relay.early_data, []
        write = backend.transport.write
        for data in early:
            write(data)
            relay.count_tx(len(data))
        super().join(relay, client, backend)
