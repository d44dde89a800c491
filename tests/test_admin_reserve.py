"""
L{ReservedListener}: out of descriptors, C{accept} gives up the spare one,
answers the waiting connection 503 with the JSON error and closes it, and
takes the spare back.  Real loopback sockets; the exhaustion is simulated
(the listener fails with C{EMFILE} while the spare is held), the real one is
in C{tests.test_admin_limits_integration}.
"""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from admin.reserve import DETAIL, DescriptorReserve, ReservedListener, keep_reserve


class Exhausted:
    """A listening socket that fails with EMFILE while C{exhausted} and the spare descriptor is held."""

    def __init__(self, listener: socket.socket, reserve: DescriptorReserve) -> None:
        self.listener = listener
        self.reserve = reserve
        self.exhausted = True

    def accept(self) -> Any:
        if self.exhausted and self.reserve.held:
            raise OSError(errno.EMFILE, "Too many open files")
        return self.listener.accept()


class ReservedListenerTests(SynchronousTestCase):

    def setUp(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        self.addCleanup(listener.close)
        self.address = listener.getsockname()
        self.reserve = DescriptorReserve()
        self.addCleanup(self.reserve.release)
        self.fake = Exhausted(listener, self.reserve)
        self.listener = ReservedListener(self.fake, self.reserve)

    def client(self, request: bytes = b"") -> socket.socket:
        client = socket.create_connection(self.address, timeout=5)
        self.addCleanup(client.close)
        client.sendall(request)
        return client

    def answer(self, client: socket.socket) -> bytes:
        """Everything the client receives until the server closes (bounded by the socket timeout)."""
        received = b""
        while data := client.recv(65536):
            received += data
        return received

    def test_outOfDescriptorsTheWaitingConnectionGets503(self) -> None:
        client = self.client(b"GET /v1/servers HTTP/1.1\r\nHost: api\r\n\r\n")
        with capturedLogs() as events:
            with self.assertRaises(BlockingIOError):
                self.listener.accept()
        head, _, body = self.answer(client).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 503 Service Unavailable")
        self.assertIn(b"Retry-After: 1", lines)
        self.assertEqual(json.loads(body), {"errors": [{"detail": DETAIL}]})
        self.assertTrue(self.reserve.held)
        self.assertEqual(self.listener.refused, 1)
        self.assertEqual([e["log_format"] for e in events][0],
                         "api: out of file descriptors: new API connections are {what}")

    def test_everyWaitingConnectionIsAnswered(self) -> None:
        clients = [self.client() for _ in range(3)]
        with self.assertRaises(BlockingIOError):
            self.listener.accept()
        for client in clients:
            self.assertEqual(json.loads(self.answer(client).partition(b"\r\n\r\n")[2]), DETAIL)
        self.assertEqual(self.listener.refused, 3)

    def test_noneWaiting(self) -> None:
        with self.assertRaises(BlockingIOError):
            self.listener.accept()
        self.assertTrue(self.reserve.held)
        self.assertEqual(self.listener.refused, 0)

    def test_withoutAnswerClosedAtOnce(self) -> None:
        listener = ReservedListener(self.fake, self.reserve, answer=False)
        client = self.client(b"\x16\x03\x01")
        with self.assertRaises(BlockingIOError):
            listener.accept()
        try:
            received = self.answer(client)
        except ConnectionResetError:  # closed with the client's bytes unread
            received = b""
        self.assertEqual(received, b"")

    def test_descriptorsBackAcceptAsUsual(self) -> None:
        self.client()
        with self.assertRaises(BlockingIOError):
            self.listener.accept()
        self.fake.exhausted = False
        self.client()
        with capturedLogs() as events:
            accepted, _ = self.listener.accept()
        accepted.close()
        self.assertEqual(self.listener.refused, 0)
        self.assertEqual([e["count"] for e in events], [1])

    def test_withoutTheSpareTheErrorStands(self) -> None:
        self.client()
        self.reserve.release()
        self.fake.exhausted = False
        self.fake.accept = lambda: (_ for _ in ()).throw(OSError(errno.EMFILE, "Too many open files"))  # type: ignore[method-assign]
        with self.assertRaises(OSError) as caught:
            self.listener.accept()
        self.assertEqual(caught.exception.errno, errno.EMFILE)

    def test_otherAttributesAreTheSocket(self) -> None:
        listener = ReservedListener(self.fake.listener, self.reserve)
        self.assertEqual(listener.getsockname(), self.address)


class KeepReserveTests(SynchronousTestCase):
    """keep_reserve wraps the socket of a real TCP port, and leaves a fake reactor's port alone."""

    def test_realPort(self) -> None:
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        keep_reserve(port)
        self.assertIsInstance(port.socket, ReservedListener)
        self.assertEqual(port.getHost().port, port.socket.getsockname()[1])

    def test_fakePort(self) -> None:
        port = MemoryReactor().listenTCP(0, Factory())
        keep_reserve(port)
        self.assertFalse(hasattr(port, "socket"))
