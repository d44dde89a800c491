"""
tests/support/netns.py: namespaces made for a test are isolated from each
other (the same 127.0.0.1 port bound in two), joined to the host through
their veth pair both ways, and removed at the end.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.etcd import started_etcd
from tests.support.netns import Namespace, ip, make_namespace, numbers_locked, require_netns
from tests.support.processes import WatchedProcess, source_env

#: A server answering NAME to every connection, on HOST:PORT (0: any), printing "listening on PORT".
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening on", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[3].encode())
    c.close()
"""

#: A client printing what HOST:PORT sends.
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(c.recv(100).decode(), flush=True)
"""


class Reader(Protocol):
    """Collects what the peer sends until it closes."""

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.data)


class Greeter(Protocol):
    """Sends C{host} and closes."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"host")
        self.transport.loseConnection()


class NamespaceTests(TestCase):
    """Namespaces as the cluster tests use them."""

    timeout = 60

    def setUp(self) -> None:
        require_netns()

    async def serve(self, namespace: Namespace, host: str, port: int, name: str) -> int:
        """Run L{SERVER} inside C{namespace}; fires with its port once it listens."""
        process = WatchedProcess(b"listening on")
        argv = namespace.argv(sys.executable, "-c", SERVER, host, str(port), name)
        reactor.spawnProcess(process, argv[0], argv, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})  # type: ignore[attr-defined]
        self.addCleanup(process.stop)
        match = await process.wait_for(rb"listening on (\d+)", 15)
        return int(match.group(1))

    async def ask(self, namespace: Namespace, host: str, port: int) -> str:
        """What a client inside C{namespace} reads from HOST:PORT."""
        argv = namespace.argv(sys.executable, "-c", CLIENT, host, str(port))
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        self.assertEqual(code, 0, err)
        return out.decode().strip()

    async def test_samePortInTwo(self) -> None:
        """Processes in two namespaces bind the same 127.0.0.1 port; each namespace reaches its own."""
        a = make_namespace(self)
        b = make_namespace(self)
        self.assertNotEqual(a.address, b.address)
        port = await self.serve(a, "127.0.0.1", 0, "a")
        self.assertEqual(await self.serve(b, "127.0.0.1", port, "b"), port)
        self.assertEqual(await self.ask(a, "127.0.0.1", port), "a")
        self.assertEqual(await self.ask(b, "127.0.0.1", port), "b")

    async def test_hostReachesNamespace(self) -> None:
        """The host reaches 10.231.N.2 through the veth, and the namespace reaches the host side 10.231.N.1."""
        namespace = make_namespace(self)
        port = await self.serve(namespace, namespace.address, 0, "inside")
        reader = Reader()
        await connectProtocol(TCP4ClientEndpoint(reactor, namespace.address, port, timeout=10), reader)
        self.assertEqual(await reader.done, b"inside")
        listening = reactor.listenTCP(0, Factory.forProtocol(Greeter), interface=namespace.host_address)  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        self.assertEqual(await self.ask(namespace, namespace.host_address, listening.getHost().port), "host")

    async def test_etcdOnHostSide(self) -> None:
        """An etcd also serving on a namespace's host side address is reached from inside the namespace."""
        namespace = make_namespace(self)
        etcd = await started_etcd(self, extra_client_hosts=[namespace.host_address])
        await etcd.put_now("/ns/key", b"shared")
        read = (
            "import sys; from balancer.cluster.etcd import read_prefix_now; "
            "print(read_prefix_now([sys.argv[1]], '/ns/').entries[0].value.decode())"
        )
        argv = namespace.argv(sys.executable, "-c", read, etcd.endpoint_on(namespace.host_address))
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=source_env())
        self.assertEqual((out.decode().strip(), code), ("shared", 0), err)

    def test_removed(self) -> None:
        """remove() (also run when the test ends) leaves no namespace and no host link behind."""
        namespace = make_namespace(self)
        self.assertIn(namespace.name, ip("netns", "list").stdout.split())
        # Under the lock: a concurrent test run would otherwise take the number freed, and its name, at once.
        with numbers_locked():
            namespace.remove()
            self.assertNotIn(namespace.name, ip("netns", "list").stdout.split())
            self.assertNotEqual(ip("link", "show", namespace.host_link, check=False).returncode, 0)
            self.assertNotIn(namespace.host_address, ip("-o", "addr", "show").stdout)
