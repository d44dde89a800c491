"""
Fuzzing the PROXY protocol header writer (L{balancer.proxy.proxy_protocol})
with hypothesis: for random IPv4 and IPv6 endpoints (IPv4-mapped and scoped
ones among them) and ports, every header of version 1 and 2 is read back by
a reference parser written here from HAProxy's proxy-protocol.txt alone,
and must say exactly the endpoints it was built from; so must the header a
relay sends its backend for a client of that address.

The writer sends no TLVs; the reference parser reads any that follow the
addresses, and the tests require that there are none.

Hypothesis runs derandomized, without an example database, with bounded
example counts: the same examples on every run, in about a second.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from typing import Any, Callable

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import DiscoveryConfig, ProxyProtocolConfig, ServerConfig
from balancer.proxy.proxy_protocol import header, header_v1, header_v2
from balancer.proxy.tcp import RelayFactory
from balancer.server_service import ServerService
from balancer.stats import RateClock

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300)
"""Repeatable and bounded: the same examples on every run, no timing-based failures."""

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


# The reference parser (proxy-protocol.txt, sections 2.1 and 2.2)

V1_MAX = 107
"""The longest version 1 header, CRLF included (section 2.1)."""

V2_SIGNATURE = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
V2_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}
"""The address block's size per address family (INET, INET6, UNIX)."""


class BadHeader(Exception):
    """The bytes do not start with a header the specification allows."""


@attrs.frozen
class Header:
    """
    What a PROXY header says.

    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"} or C{"LOCAL"}.
    @ivar transport: C{"STREAM"}, C{"DGRAM"}, or C{None} (unknown or unspecified).
    @ivar source: the client's address and port, C{None} when not given.
    @ivar destination: the address and port the client connected to.
    @ivar tlvs: the type-length-value records after the addresses, as C{(type, value)}.
    @ivar size: the header's length in bytes.
    """

    version: int
    command: str
    transport: str | None
    source: tuple[IP, int] | None
    destination: tuple[IP, int] | None
    tlvs: tuple[tuple[int, bytes], ...]
    size: int


def parse(data: bytes) -> Header:
    """The header at the start of C{data} (more bytes may follow it)."""
    if data.startswith(V2_SIGNATURE):
        return parse_v2(data)
    if data.startswith(b"PROXY "):
        return parse_v1(data)
    raise BadHeader(f"no signature: {data[:16]!r}")


def v1_port(text: str) -> int:
    """A version 1 port: decimal, 0 to 65535, no sign, no leading zero."""
    if not text.isdigit() or not text.isascii() or (text != "0" and text.startswith("0")) or int(text) > 65535:
        raise BadHeader(f"bad port {text!r}")
    return int(text)


def v1_address(text: str, family: int) -> IP:
    """A version 1 address of C{family}, parsed with C{inet_pton} as HAProxy does."""
    try:
        packed = socket.inet_pton(family, text)
    except OSError:
        raise BadHeader(f"bad address {text!r}") from None
    return ipaddress.ip_address(packed)


def parse_v1(data: bytes) -> Header:
    """Section 2.1: one US-ASCII line of at most 107 bytes, fields separated by single spaces."""
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        raise BadHeader("no CRLF within 107 bytes")
    line = data[:end]
    if not line.isascii():
        raise BadHeader("not US-ASCII")
    fields = line.decode("ascii").split(" ")
    size = end + 2
    if fields[1:2] == ["UNKNOWN"]:
        return Header(1, "PROXY", None, None, None, (), size)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise BadHeader(f"bad line {line!r}")
    family = socket.AF_INET if fields[1] == "TCP4" else socket.AF_INET6
    source = (v1_address(fields[2], family), v1_port(fields[4]))
    destination = (v1_address(fields[3], family), v1_port(fields[5]))
    return Header(1, "PROXY", "STREAM", source, destination, (), size)


def parse_v2(data: bytes) -> Header:
    """Section 2.2: signature, version and command, family and transport, length, addresses, TLVs."""
    if len(data) < 16:
        raise BadHeader("short version 2 header")
    version, command = data[12] >> 4, data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    length = int.from_bytes(data[14:16], "big")
    if version != 2 or command not in (0, 1):
        raise BadHeader(f"bad version and command 0x{data[12]:02x}")
    if family > 3 or transport > 2:
        raise BadHeader(f"bad family and transport 0x{data[13]:02x}")
    if len(data) < 16 + length:
        raise BadHeader("the length runs past the data")
    block = data[16 : 16 + length]
    source = destination = None
    used = 0
    if family in (1, 2):
        size = 4 if family == 1 else 16
        used = V2_ADDRESS_SIZES[family]
        if length < used:
            raise BadHeader(f"{length} bytes cannot hold the addresses")
        source = (ipaddress.ip_address(block[:size]), int.from_bytes(block[2 * size : 2 * size + 2], "big"))
        destination = (ipaddress.ip_address(block[size : 2 * size]), int.from_bytes(block[2 * size + 2 : used], "big"))
    elif family == 3:
        used = V2_ADDRESS_SIZES[3]
        if length < used:
            raise BadHeader(f"{length} bytes cannot hold the UNIX addresses")
    tlvs = []
    rest = block[used:]
    while rest:
        if len(rest) < 3 or len(rest) < 3 + int.from_bytes(rest[1:3], "big"):
            raise BadHeader("a TLV runs past the header")
        end = 3 + int.from_bytes(rest[1:3], "big")
        tlvs.append((rest[0], rest[3:end]))
        rest = rest[end:]
    return Header(
        2,
        "PROXY" if command else "LOCAL",
        {0: None, 1: "STREAM", 2: "DGRAM"}[transport],
        source,
        destination,
        tuple(tlvs),
        16 + length,
    )


# Strategies

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4)
mapped = ipv4.map(lambda ip: ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed))
"""IPv4-mapped IPv6 addresses: a dual-stack listener's IPv4 clients."""

ipv6 = st.one_of(st.ip_addresses(v=6), mapped)


@st.composite
def scoped(draw: Callable[..., Any], ips: st.SearchStrategy[ipaddress.IPv6Address]) -> str:
    """An IPv6 address as a transport gives it, sometimes with a C{%scope} (link-local addresses)."""
    ip = draw(ips)
    if draw(st.booleans()):
        return f"{ip}%{draw(st.sampled_from(['eth0', 'lo', '2', 'wlp3s0']))}"
    return str(ip)


@attrs.frozen
class Connection:
    """A connection's two ends as a transport gives them, and what a header must say of them."""

    client: Any
    server: Any
    expected: tuple[tuple[IP, int], tuple[IP, int]] | None


def plain(ip: IP) -> IP:
    """An address as a header carries it: IPv4-mapped IPv6 as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@st.composite
def connections(draw: Callable[..., Any], kind: str = "TCP") -> Connection:
    """Two endpoints of one family (IPv4, or IPv6 maybe mapped or scoped), or of mixed families."""
    shape = draw(st.sampled_from(["4", "6", "6", "mixed"]))
    if shape == "4":
        hosts = [str(draw(ipv4)), str(draw(ipv4))]
    elif shape == "6":
        hosts = [draw(scoped(ipv6)), draw(scoped(ipv6))]
    else:
        hosts = [str(draw(ipv4)), draw(scoped(ipv6))]
        hosts = hosts if draw(st.booleans()) else hosts[::-1]
    endpoints = []
    for host in hosts:
        port = draw(ports)
        ip = ipaddress.ip_address(host.partition("%")[0])
        endpoints.append(((IPv4Address if ip.version == 4 else IPv6Address)(kind, host, port), (plain(ip), port)))
    (client, source), (server, destination) = endpoints
    expected = (source, destination) if source[0].version == destination[0].version else None
    return Connection(client, server, expected)


# The tests


class RoundTripTests(SynchronousTestCase):
    """What the writer builds, the reference parser reads back as the endpoints it was built from."""

    @FUZZ
    @given(connections(), st.binary(max_size=32))
    def test_v1(self, connection: Connection, payload: bytes) -> None:
        built = header_v1(connection.client, connection.server)
        self.assertLessEqual(len(built), V1_MAX)
        read = parse(built + payload)
        self.assertEqual(read.size, len(built))
        if connection.expected is None:
            self.assertEqual((read.transport, read.source, read.destination), (None, None, None))
            self.assertEqual(built, b"PROXY UNKNOWN\r\n")
            return
        self.assertEqual((read.version, read.transport), (1, "STREAM"))
        self.assertEqual((read.source, read.destination), connection.expected)
        family = "TCP4" if connection.expected[0][0].version == 4 else "TCP6"
        self.assertEqual(built.split(b" ")[1], family.encode())

    @FUZZ
    @given(st.sampled_from(["TCP", "UDP"]).flatmap(connections), st.binary(max_size=32))
    def test_v2(self, connection: Connection, payload: bytes) -> None:
        built = header_v2(connection.client, connection.server)
        read = parse(built + payload)
        self.assertEqual((read.version, read.command, read.tlvs, read.size), (2, "PROXY", (), len(built)))
        if connection.expected is None:
            self.assertEqual((read.transport, read.source, read.destination, built[13:]), (None, None, None, b"\0\0\0"))
            return
        self.assertEqual(read.transport, "DGRAM" if connection.client.type == "UDP" else "STREAM")
        self.assertEqual((read.source, read.destination), connection.expected)
        version = connection.expected[0][0].version
        self.assertEqual(built[13] >> 4, 1 if version == 4 else 2)
        self.assertEqual(len(built), 16 + (12 if version == 4 else 36), "addresses and nothing more")

    @FUZZ
    @given(connections(), st.sampled_from(["1", "2"]))
    def test_dispatch(self, connection: Connection, version: str) -> None:
        built = header(version, connection.client, connection.server)
        self.assertEqual(parse(built).version, int(version))

    def test_longestV1HeaderFits(self) -> None:
        full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        built = header_v1(IPv6Address("TCP", full + "%eth0", 65535), IPv6Address("TCP", full, 65535))
        self.assertEqual(len(built), 104)
        self.assertEqual(parse(built).source, (ipaddress.ip_address(full), 65535))

    def test_nonIpEndpointsAreUnknown(self) -> None:
        unix = UNIXAddress(b"/run/balancer.sock")
        for client, server in ((unix, unix), (unix, IPv4Address("TCP", "10.0.0.1", 80))):
            self.assertEqual(parse(header_v1(client, server)).source, None)
            self.assertEqual(parse(header_v2(client, server)).transport, None)


class ReferenceParserTests(SynchronousTestCase):
    """The reference parser refuses what the specification does, so a round trip through it means something."""

    def test_refusals(self) -> None:
        for bad in (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443",  # no CRLF
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n",
            b"PROXY TCP4 ::1 ::2 80 443\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n",
            b"PROXY TCP4 " + b"1" * 100 + b"\r\n",
            V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
            V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),
            V2_SIGNATURE + b"\x21\x11\x00\x0b" + bytes(11),
            V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(11),
            V2_SIGNATURE + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01\x00",
        ):
            self.assertRaises(BadHeader, parse, bad)

    def test_tlvsAreRead(self) -> None:
        data = V2_SIGNATURE + b"\x21\x11\x00\x14" + bytes(12) + b"\x01\x00\x02h2" + b"\x04\x00\x00" + b"rest"
        self.assertEqual(parse(data).tlvs, ((1, b"h2"), (4, b"")))
        self.assertEqual(parse(data).size, 36)


def relay_header(connection: Connection, version: str) -> bytes:
    """The bytes a relay sends its backend first, for a client connected from C{client} to C{server}."""
    reactor = MemoryReactorClock()
    config = ServerConfig(
        bind=HostPort("127.0.0.1", 0),
        balance="roundrobin",
        discovery=DiscoveryConfig(kind="static", static_list=(parse_backend_line("10.0.0.1:80"),)),
        proxy_protocol=ProxyProtocolConfig(version=version),
    )
    server = ServerService("fuzz", config, reactor, RateClock(reactor), rng=random.Random(0))
    server.startService()
    client = RelayFactory(server).buildProtocol(connection.client)
    client.makeConnection(StringTransport(hostAddress=connection.server, peerAddress=connection.client))
    side = reactor.tcpClients[0][2].buildProtocol(None)
    backend = StringTransport()
    side.makeConnection(backend)
    client.dataReceived(b"first bytes")
    return backend.value()


class RelayTests(SynchronousTestCase):
    """A relay's backend gets a header for its client's own addresses, then the client's bytes."""

    @settings(FUZZ, max_examples=100)
    @given(connections(), st.sampled_from(["1", "2"]))
    def test_headerForTheClient(self, connection: Connection, version: str) -> None:
        sent = relay_header(connection, version)
        read = parse(sent)
        self.assertEqual(sent[read.size :], b"first bytes")
        if connection.expected is None:
            self.assertEqual(read.source, None)
        else:
            self.assertEqual((read.version, read.source, read.destination), (int(version), *connection.expected))
