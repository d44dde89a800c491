"""
TLS terminated on the relay L{engine<balancer.proxy.engine.engine>}: a
client's TLS connection is an OpenSSL connection reading and writing the
client's socket itself (C{SSL_set_fd}), with no memory buffers between the
TLS layer and the socket and no Twisted transport under it.

A L{TlsSocketTransport} is such a client's transport from the moment it is
accepted.  It handshakes at once (the client's side is told with
C{handshakeCompleted}, as by Twisted's TLS transport), then reads nothing
until its relay joins it to the backend's L{SplicedTransport}; from then on
it decrypts what the client sends into the backend's socket, and encrypts
what the backend sends (copied by the backend's transport, which never
splices towards a TLS transport).  Flow control is that of the engine: a
read the other side cannot take at once stops the reading until that side
is drained.

Endings, as a relay sees them:
  - the client's C{close_notify}, or the end of its TCP stream without one,
    is the end of its input (passed on to the backend as a half-close);
  - a reset, or a TLS error after the handshake, is a lost connection;
  - a handshake that fails is lost with the OpenSSL error (the relay counts
    it in C{tls_failures}), but a client that leaves during its handshake
    ends it with C{ConnectionDone} (or C{ConnectionLost} for a reset);
  - closing sends C{close_notify} once everything before it was sent, shuts
    the socket's write side, and reads until the client ends too, for at
    most L{CLOSE_WAIT} seconds: a close that does not wait could reset a
    client still sending, which would then lose the last bytes.  What it
    reads goes on to the backend if the backend only shut its write side
    (as on Twisted's transports, where TLS has no half-close either: a
    backend's end of stream closes its TLS client, whose later bytes still
    reach it), and is discarded if the backend is gone.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure

from balancer.proxy.engine.splice import COPY_SIZE, READS_PER_EVENT, SplicedTransport

if TYPE_CHECKING:
    from balancer.proxy.engine.engine import Engine

#: Seconds a closed TLS connection waits for its client to end too (see the module's docstring).
CLOSE_WAIT = 5.0

_DONE = Failure(ConnectionDone())
_LOST = Failure(ConnectionLost())


class TlsSocketTransport(SplicedTransport):
    """
    A TLS client's connection on the engine: the transport its protocol sees
    (as L{SplicedTransport}'s, plus C{resumeProducing} and a C{getHandle}
    that is the OpenSSL connection, as Twisted's TLS transport has), and the
    engine's reader and writer of its socket.
    """

    __slots__ = ("_tls", "_handshaking", "_read_blocked", "_lingering")

    #: The backend's transport copies its reads into this one's buffer.
    takes_pipes = False

    def __init__(self, engine: Engine, sock: Any, address: IAddress | None, context: SSL.Context) -> None:
        """
        Start handshaking on C{sock} (accepted, non-blocking) with C{context}.

        @param address: the client's address.
        """
        super().__init__(engine, sock, address)
        tls = self._tls = SSL.Connection(context, sock)
        tls.set_accept_state()
        self._handshaking = True
        self._read_blocked = False
        self._lingering: int | None = None
        self._start_reading()

    # The transport, as the relay's protocol sees it

    def getHandle(self) -> SSL.Connection:
        """The OpenSSL connection (its server name, its session...)."""
        return self._tls

    def pauseProducing(self) -> None:
        """Read nothing more until joined (or resumed): the handshake is done, the client is being routed."""
        self._stop_reading()

    def resumeProducing(self) -> None:
        """Read again (a closing connection reads its client's end)."""
        if self._read_open and not self._closed:
            self._start_reading()

    def write(self, data: bytes) -> None:
        """Encrypt C{data} and send it (after what waits)."""
        if not (self._closed or self._closing):
            self._pending += data
            self._flush()

    def loseWriteConnection(self) -> None:
        """TLS has no half-close here: close."""
        self.loseConnection()

    def loseConnection(self) -> None:
        """
        Close: at once during the handshake; else send C{close_notify} once
        everything before it was sent, then wait for the client's end.
        """
        if self._closing or self._closed:
            return
        self._closing = True
        if self._handshaking:
            self._stop_reading()
            self._close(_DONE)
        elif not self._pending:
            self._say_goodbye()

    # The descriptor, as the engine sees it

    def doRead(self) -> None:
        """
        Handshake; or decrypt what the client sent into the backend's
        transport, until the socket has nothing more, the client's input
        ends, or the backend cannot take it at once (also while closing, if
        the backend still reads: it only shut its write side); or, closing
        with no backend to take it, read until the client ends.
        """
        if self._handshaking:
            self._handshake()
            return
        peer = self._peer
        if self._closing and (peer is None or peer._closed):
            self._read_to_the_end()
            return
        assert peer is not None, "read before join"
        recv = self._tls.recv
        for _ in range(READS_PER_EVENT):
            if peer._closed:
                self._stop_reading()
                return
            try:
                data = recv(COPY_SIZE)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self._input_ended()
                return
            except SSL.WantWriteError:
                # The TLS layer has something to send first (a socket full): read again once it can.
                self._read_blocked = True
                self._start_writing()
                return
            except SSL.SysCallError as e:
                if e.args[0] == -1:
                    self._input_ended()  # the TCP stream ended without close_notify
                else:
                    self._fail()
                return
            except SSL.Error:
                self._fail()
                return
            self._count(len(data))  # type: ignore[misc]
            peer._pending += data
            if not peer._flush():
                self._stop_reading()
                return
        self._engine.read_again(self)

    def doWrite(self) -> None:
        """The socket takes bytes again: go on with the handshake, a read that waited, or the sending."""
        if self._closed:
            return
        if self._handshaking:
            self._handshake()
            return
        if self._read_blocked:
            self._read_blocked = False
            self._engine.read_again(self)
        if self._flush():
            self._drained()

    def deadline_passed(self) -> None:
        """
        The client did not end within L{CLOSE_WAIT} seconds of the close:
        close now (as a lost connection if its bytes were still passed to
        the backend, which must not take them for complete).
        """
        self._lingering = None
        peer = self._peer
        self._close(_DONE if peer is None or peer._closed else _LOST)

    # Inside

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except SSL.WantReadError:
            self._stop_writing()
            return
        except SSL.WantWriteError:
            self._start_writing()
            return
        except SSL.ZeroReturnError:
            # The client left during its handshake (its TCP end: see TlsTransports): not a failed handshake.
            self._close(_DONE)
            return
        except SSL.SysCallError as e:
            # The client reset during its handshake: not a failed handshake either.
            self._close(_DONE if e.args[0] == -1 else _LOST)
            return
        except SSL.Error:
            self._close(Failure())
            return
        self._handshaking = False
        self._stop_writing()
        self.protocol.handshakeCompleted()

    def _flush(self) -> bool:
        """
        Encrypt and send what waits.

        @return: whether all of it was sent (else the socket is full, and this
            transport waits for it, or it failed).
        """
        pending = self._pending
        if not pending:
            return True
        send = self._tls.send
        view = memoryview(pending)
        sent = 0
        size = len(pending)
        while sent < size:
            try:
                sent += send(view[sent:])
            except SSL.WantWriteError:
                self._pending = pending[sent:]
                self._start_writing()
                return False
            except SSL.Error:
                # Also a write wanting a read: only renegotiation asks that, which these contexts refuse.
                self._pending = b""
                self._fail()
                return False
        self._pending = b""
        return True

    def _drained(self) -> None:
        """Everything waiting was sent: say goodbye if closing, else let the backend be read again."""
        self._stop_writing()
        if self._closing:
            self._say_goodbye()
        elif self._producer is not None:
            self._producer._resume()

    def _say_goodbye(self) -> None:
        """
        Send C{close_notify}, shut the write side, and wait for the client's
        end (if it has not ended); with the socket full, all this waits for
        room (L{doWrite} comes back here).
        """
        try:
            self._tls.shutdown()
        except SSL.WantWriteError:
            self._start_writing()
            return
        except SSL.Error:
            pass  # a client already gone: it gets the end of the TCP stream alone
        if not self._read_open:
            self._close(_DONE)
            return
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(_DONE)
            return
        self._lingering = self._engine.deadlines.add(CLOSE_WAIT, self)
        self._start_reading()

    def _input_ended(self) -> None:
        """The client's input ended; if its close was only waiting for that (C{close_notify} sent), close."""
        self._end_of_input()
        if self._lingering is not None:
            self._close(_DONE)

    def _resume(self) -> None:
        # Also while closing: a backend that only shut its write side still takes the client's bytes.
        if self._read_open and not self._closed:
            self._start_reading()

    def _read_to_the_end(self) -> None:
        """Closing: discard what the client still sends, until its end (or an error)."""
        recv = self._tls.recv
        for _ in range(READS_PER_EVENT):
            try:
                recv(COPY_SIZE)
            except SSL.WantReadError:
                return
            except SSL.WantWriteError:
                continue
            except SSL.Error:  # its close_notify, its end, a reset
                self._close(_DONE)
                return
        self._engine.read_again(self)

    def _detach(self) -> None:
        if self._lingering is not None:
            self._engine.deadlines.remove(self._lingering, self)
            self._lingering = None
        super()._detach()


class TlsTransports:
    """
    Makes a L{TlsSocketTransport} for each client an engine listener
    accepts, with one OpenSSL context (whose callbacks may switch a
    connection to another: by server name, for a TLS-ALPN-01 challenge).
    """

    def __init__(self, context: SSL.Context) -> None:
        """
        Serve with C{context}, a L{balancer.proxy.tls.server_context}'s: it
        takes the end of a TCP stream without C{close_notify} for the end of
        the client's input (C{OP_IGNORE_UNEXPECTED_EOF}), so that a client
        that half-closed still gets the backend's answer.
        """
        self.context = context

    def __call__(self, engine: Engine, sock: Any, address: IAddress) -> TlsSocketTransport:
        """The transport of the client accepted on C{sock}."""
        return TlsSocketTransport(engine, sock, address, self.context)
