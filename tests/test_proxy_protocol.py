"""Tests for L{balancer.proxy.proxy_protocol}, checked against the specification's bytes and an independent parser."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.proxy.proxy_protocol import V2_SIGNATURE, header, header_v1, header_v2
from tests.support.proxy_protocol_peer import ProxyProtocolPeer, ProxyProtocolPeerFactory

SIGNATURE_FROM_SPEC = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
CLIENT4 = IPv4Address("TCP", "192.168.0.1", 56324)
SERVER4 = IPv4Address("TCP", "192.168.0.11", 443)
CLIENT6 = IPv6Address("TCP", "2001:db8::1", 56324)
SERVER6 = IPv6Address("TCP", "2001:db8::11", 443)


class V1Tests(SynchronousTestCase):
    """The text header."""

    def test_tcp4ExampleFromSpec(self) -> None:
        self.assertEqual(header_v1(CLIENT4, SERVER4), b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")

    def test_tcp6(self) -> None:
        self.assertEqual(header_v1(CLIENT6, SERVER6), b"PROXY TCP6 2001:db8::1 2001:db8::11 56324 443\r\n")

    def test_longestHeaderFromSpec(self) -> None:
        full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        built = header_v1(IPv6Address("TCP", full, 65535), IPv6Address("TCP", full, 65535))
        self.assertEqual(built, f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode())
        self.assertEqual(len(built), 104)

    def test_ipv4MappedIsTcp4(self) -> None:
        built = header_v1(IPv6Address("TCP", "::ffff:10.0.0.1", 5000), IPv6Address("TCP", "::ffff:10.0.0.2", 80))
        self.assertEqual(built, b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n")

    def test_scopeIsDropped(self) -> None:
        built = header_v1(IPv6Address("TCP", "fe80::1%eth0", 5000), IPv6Address("TCP", "fe80::2%eth0", 80))
        self.assertEqual(built, b"PROXY TCP6 fe80::1 fe80::2 5000 80\r\n")

    def test_mixedFamiliesAreUnknown(self) -> None:
        self.assertEqual(header_v1(CLIENT4, SERVER6), b"PROXY UNKNOWN\r\n")

    def test_unixSocketIsUnknown(self) -> None:
        self.assertEqual(header_v1(UNIXAddress(b"/tmp/sock"), UNIXAddress(b"/tmp/sock")), b"PROXY UNKNOWN\r\n")

    def test_udpIsRefused(self) -> None:
        udp = IPv4Address("UDP", "10.0.0.1", 53)
        self.assertRaises(ValueError, header_v1, udp, udp)


class V2Tests(SynchronousTestCase):
    """The binary header."""

    def test_signature(self) -> None:
        self.assertEqual(V2_SIGNATURE, SIGNATURE_FROM_SPEC)

    def test_tcp4(self) -> None:
        self.assertEqual(
            header_v2(CLIENT4, SERVER4),
            SIGNATURE_FROM_SPEC
            + b"\x21\x11\x00\x0c"
            + b"\xc0\xa8\x00\x01"
            + b"\xc0\xa8\x00\x0b"
            + b"\xdc\x04\x01\xbb",
        )

    def test_tcp6(self) -> None:
        self.assertEqual(
            header_v2(CLIENT6, SERVER6),
            SIGNATURE_FROM_SPEC
            + b"\x21\x21\x00\x24"
            + bytes.fromhex("20010db8000000000000000000000001")
            + bytes.fromhex("20010db8000000000000000000000011")
            + b"\xdc\x04\x01\xbb",
        )

    def test_udp4(self) -> None:
        built = header_v2(IPv4Address("UDP", "10.0.0.1", 5353), IPv4Address("UDP", "10.0.0.2", 53))
        self.assertEqual(built, SIGNATURE_FROM_SPEC + b"\x21\x12\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x14\xe9\x00\x35")

    def test_udp6(self) -> None:
        built = header_v2(IPv6Address("UDP", "::1", 5353), IPv6Address("UDP", "::2", 53))
        self.assertEqual(built[12:16], b"\x21\x22\x00\x24")
        self.assertEqual(built[16:], b"\x00" * 15 + b"\x01" + b"\x00" * 15 + b"\x02" + b"\x14\xe9\x00\x35")

    def test_ipv4MappedIsInet(self) -> None:
        built = header_v2(IPv6Address("TCP", "::ffff:10.0.0.1", 1), IPv6Address("TCP", "::ffff:10.0.0.2", 2))
        self.assertEqual(built[12:], b"\x21\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x00\x01\x00\x02")

    def test_mixedFamiliesAreUnspec(self) -> None:
        self.assertEqual(header_v2(CLIENT6, SERVER4), SIGNATURE_FROM_SPEC + b"\x21\x00\x00\x00")


class DispatchTests(SynchronousTestCase):
    """L{header} picks the version by its C{[proxy_protocol] version} text."""

    def test_versions(self) -> None:
        self.assertEqual(header("1", CLIENT4, SERVER4), header_v1(CLIENT4, SERVER4))
        self.assertEqual(header("2", CLIENT4, SERVER4), header_v2(CLIENT4, SERVER4))
        self.assertRaises(ValueError, header, "3", CLIENT4, SERVER4)


def feed(data: bytes, chunk: int) -> tuple[ProxyProtocolPeer, StringTransport]:
    """A peer on a fake transport, fed C{data} C{chunk} bytes at a time."""
    peer = ProxyProtocolPeer()
    transport = StringTransport()
    peer.makeConnection(transport)
    for i in range(0, len(data), chunk):
        peer.dataReceived(data[i : i + chunk])
    return peer, transport


class PeerTests(SynchronousTestCase):
    """The independent test parser reads what the builder writes, in any split."""

    def test_v1AnySplit(self) -> None:
        for chunk in (1, 5, 1000):
            peer, transport = feed(header_v1(CLIENT4, SERVER4) + b"payload", chunk)
            self.assertEqual((peer.version, peer.protocol), (1, "TCP4"))
            self.assertEqual(peer.source, ("192.168.0.1", 56324))
            self.assertEqual(peer.destination, ("192.168.0.11", 443))
            self.assertEqual(transport.value(), b"payload")

    def test_v2AnySplit(self) -> None:
        for chunk in (1, 7, 1000):
            peer, transport = feed(header_v2(CLIENT6, SERVER6) + b"payload", chunk)
            self.assertEqual((peer.version, peer.command, peer.protocol), (2, "PROXY", "TCP6"))
            self.assertEqual(peer.source, ("2001:db8::1", 56324))
            self.assertEqual(peer.destination, ("2001:db8::11", 443))
            self.assertEqual(transport.value(), b"payload")

    def test_v2Udp(self) -> None:
        peer, _ = feed(header_v2(IPv4Address("UDP", "10.0.0.1", 5353), IPv4Address("UDP", "10.0.0.2", 53)), 100)
        self.assertEqual((peer.protocol, peer.source), ("UDP4", ("10.0.0.1", 5353)))

    def test_unknown(self) -> None:
        peer, transport = feed(header_v1(CLIENT4, SERVER6) + b"x", 100)
        self.assertEqual((peer.protocol, peer.source), ("UNKNOWN", None))
        self.assertEqual(transport.value(), b"x")
        peer, _ = feed(header_v2(CLIENT4, SERVER6), 100)
        self.assertEqual((peer.version, peer.protocol, peer.source), (2, "UNKNOWN", None))

    def test_peerRefusesNoHeader(self) -> None:
        peer, transport = feed(b"GET / HTTP/1.1\r\n\r\n", 100)
        self.assertIn("not a PROXY header", peer.error)
        self.assertTrue(transport.disconnecting)


class Sender(Protocol):
    """Sends a PROXY header for its own connection, then a payload, and collects the echo."""

    def __init__(self, version: str, payload: bytes) -> None:
        self.version = version
        self.payload = payload
        self.echoed: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._received = b""

    def connectionMade(self) -> None:
        transport = self.transport
        self.transport.write(header(self.version, transport.getHost(), transport.getPeer()) + self.payload)

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        if len(self._received) >= len(self.payload):
            self.echoed.callback(self._received)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class LoopbackTests(TestCase):
    """Headers built from a real connection's addresses reach a real backend."""

    timeout = 10

    @inlineCallbacks
    def exchange(self, version: str):  # type: ignore[no-untyped-def]
        factory = ProxyProtocolPeerFactory()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        sender = Sender(version, b"hello through the header")
        connected = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), sender)
        client_port = connected.transport.getHost().port
        peer = yield factory.next_peer()
        echoed = yield sender.echoed
        yield sender.lost
        yield peer.lost
        self.assertEqual(echoed, b"hello through the header")
        self.assertEqual(peer.source, ("127.0.0.1", client_port))
        self.assertEqual(peer.destination, ("127.0.0.1", port.getHost().port))
        return peer

    @inlineCallbacks
    def test_v1(self):  # type: ignore[no-untyped-def]
        peer = yield self.exchange("1")
        self.assertEqual((peer.version, peer.protocol), (1, "TCP4"))

    @inlineCallbacks
    def test_v2(self):  # type: ignore[no-untyped-def]
        peer = yield self.exchange("2")
        self.assertEqual((peer.version, peer.protocol), (2, "TCP4"))
