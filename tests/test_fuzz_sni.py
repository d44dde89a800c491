"""
Fuzzing the SNI ClientHello reader (L{balancer.proxy.sni}) where it meets
bytes from outside: L{SniClientSide} on a string transport, fed arbitrary and
mutated bytes and real ClientHellos in every chunking.

What must hold, whatever the bytes and however they are split:

  - nothing raises out of the protocol and nothing is logged at error
    level or with a traceback;
  - the client is routed (with the name of its hello, or without one) or
    closed, by the time its bytes are in or C{read_timeout} has passed;
  - the verdict depends on the bytes alone, not on how reads split them;
  - a routed client's bytes reach the backend exactly as sent, and the
    session ends cleanly (no relay, counter or timer left behind);
  - a real ClientHello (OpenSSL through pyOpenSSL and through the standard
    library's C{ssl}, with names, ALPN, resumption tickets and the other
    extensions they send; hand-built ones with padding, large session
    tickets, GREASE and odd name lists) routes by its exact server name,
    also when it is split over several handshake records, as the reader
    supports (RFC 8446 section 5.1).

Hypothesis runs derandomized (the examples are a function of the test's
code), without an example database, and with bounded example counts, so a
run is repeatable and takes seconds; a failure prints the falsifying example.
"""

from __future__ import annotations

import itertools
import random
import ssl
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import DiscoveryConfig, ServerConfig, SniConfig
from balancer.proxy.sni import MAX_HELLO_BYTES, SniClientSide
from balancer.proxy.tcp import RelayFactory
from balancer.server_service import ServerService
from balancer.stats import RateClock
from tests.support.certs import make_certificates
from tests.support.hellos import client_hello

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Repeatable and bounded: the same examples on every run, no timing-based failures."""

READ_TIMEOUT = 2.0
NAMED_BACKEND = "10.0.0.1:443"
PLAIN_BACKEND = "10.0.0.3:443"
_RECORD_HEADER = 5
_MAX_FRAGMENT = 1 << 14


# The protocol under test, on fakes


class ClientTransport(StringTransport):
    """A client's TCP transport as the relay sees it: it half-closes, aborts and unregisters as TCP does."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        self.write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


@implementer(ILogObserver)
@attrs.define
class Problems:
    """Collects log events at error level or above and events carrying a failure."""

    events: list[dict[str, Any]] = attrs.Factory(list)

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            self.events.append(event)


@attrs.frozen
class Outcome:
    """
    What became of one client.

    @ivar routed: whether a backend was chosen (else the client was closed).
    @ivar name: the server name it was routed by.
    @ivar counted: whether it was counted in C{sni_failures}.
    @ivar to_backend: every byte the backend received.
    """

    routed: bool
    name: str | None
    counted: bool
    to_backend: bytes


def make_server(reactor: MemoryReactorClock) -> ServerService:
    """A started TCP server with C{[sni]}: one backend for C{a.test}, one without C{sni} for the rest."""
    specs = tuple(parse_backend_line(line) for line in (f"{NAMED_BACKEND} sni=a.test", PLAIN_BACKEND))
    config = ServerConfig(
        bind=HostPort("127.0.0.1", 0),
        balance="roundrobin",
        discovery=DiscoveryConfig(kind="static", static_list=specs),
        sni=SniConfig(read_timeout=READ_TIMEOUT),
    )
    server = ServerService("fuzz", config, reactor, RateClock(reactor), rng=random.Random(0))
    server.startService()
    return server


def arrive() -> tuple[MemoryReactorClock, ServerService, SniClientSide, ClientTransport]:
    """A client connects to a fresh server of L{make_server}."""
    reactor = MemoryReactorClock()
    server = make_server(reactor)
    client = RelayFactory(server, SniClientSide).buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    assert isinstance(client, SniClientSide)
    transport = ClientTransport()
    client.makeConnection(transport)
    return reactor, server, client, transport


def chunked(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """C{data} split at the offsets in C{cuts} (any order, repeats and out-of-range ones ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Harness:
    """Runs clients through L{SniClientSide}, checking what must hold for every one."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test

    def run(self, data: bytes, cuts: Sequence[int] = ()) -> Outcome:
        """
        A client connects and sends C{data} in the reads C{cuts} make; it is
        then routed (its backend accepts and gets the rest) or closed, at the
        latest when C{read_timeout} passes.  Then both ends go away.
        """
        problems = Problems()
        globalLogPublisher.addObserver(problems)
        try:
            outcome = self._run(data, chunked(data, cuts))
        finally:
            globalLogPublisher.removeObserver(problems)
        self.test.assertEqual(problems.events, [], "errors logged")
        return outcome

    def _run(self, data: bytes, chunks: list[bytes]) -> Outcome:
        test = self.test
        reactor, server, client, transport = arrive()
        pending = list(chunks)
        # A TCP transport delivers nothing once it closes or is paused.
        while pending and transport.producerState == "producing" and not transport.disconnecting:
            client.dataReceived(pending.pop(0))
        if not reactor.tcpClients and not transport.disconnecting:
            test.assertEqual(client.relay.server_name, None)
            reactor.advance(READ_TIMEOUT)
        counted = server.counters.sni_failures
        test.assertIn(counted, (0, 1))
        if not reactor.tcpClients:
            test.assertTrue(transport.disconnecting, "neither routed nor closed")
            test.assertEqual(counted, 1, "a client closed for its hello is counted")
            client.connectionLost(Failure(ConnectionDone()))
            self._ended(server, reactor)
            return Outcome(False, None, True, b"")
        test.assertEqual(len(reactor.tcpClients), 1, "one backend attempt")
        test.assertEqual(counted, 0)
        test.assertFalse(transport.disconnecting)
        host, port = reactor.tcpClients[0][:2]
        name = client.relay.server_name
        test.assertEqual(f"{host}:{port}", NAMED_BACKEND if name == "a.test" else PLAIN_BACKEND)
        side = reactor.tcpClients[0][2].buildProtocol(None)
        backend = ClientTransport()
        side.makeConnection(backend)
        test.assertEqual(transport.producerState, "producing", "client resumed once its backend is there")
        for chunk in pending:
            client.dataReceived(chunk)
        test.assertEqual(backend.value(), data, "the backend gets the client's bytes as sent")
        test.assertEqual(client.relay.tx, len(data))
        client.connectionLost(Failure(ConnectionDone()))
        side.connectionLost(Failure(ConnectionDone()))
        self._ended(server, reactor)
        return Outcome(True, name, False, backend.value())

    def _ended(self, server: ServerService, reactor: MemoryReactorClock) -> None:
        test = self.test
        test.assertEqual(server.relays, {})
        test.assertEqual(server.counters.active_connections, 0)
        test.assertEqual(reactor.getDelayedCalls(), [], "a timer left behind")


# ClientHellos


def records(message: bytes, sizes: Sequence[int], version: int = 1) -> bytes:
    """C{message} framed as handshake records; the fragment sizes cycle through C{sizes}."""
    framed = []
    at = 0
    for size in itertools.cycle(sizes):
        if at >= len(message):
            return b"".join(framed)
        fragment = message[at : at + size]
        framed.append(bytes([22, 3, version]) + vector(2, fragment))
        at += size
    raise AssertionError("unreachable: sizes is not empty")


def unframe(hello: bytes) -> bytes:
    """The handshake message of a first flight sent as one record."""
    assert hello[0] == 22 and int.from_bytes(hello[3:5], "big") == len(hello) - _RECORD_HEADER, hello[:5]
    return hello[_RECORD_HEADER:]


def vector(size: int, data: bytes) -> bytes:
    """C{data} prefixed by its length in C{size} bytes."""
    return len(data).to_bytes(size, "big") + data


def extension(kind: int, data: bytes) -> bytes:
    """One ClientHello extension."""
    return kind.to_bytes(2, "big") + vector(2, data)


def handshake(body: bytes, kind: int = 1) -> bytes:
    """A handshake message of type C{kind} (a ClientHello unless told) around C{body}."""
    return bytes([kind]) + vector(3, body)




def stdlib_context(max_version: ssl.TLSVersion, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A client context of the standard library that does not check the server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = max_version
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def stdlib_hello(
    name: str | None,
    alpn: Sequence[str] = (),
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    session: ssl.SSLSession | None = None,
) -> bytes:
    """The first flight of a standard library client (resuming C{session}, if given)."""
    context = stdlib_context(max_version, alpn) if session is None else session_contexts[max_version][0]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name, session=session)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


session_contexts: dict[ssl.TLSVersion, tuple[ssl.SSLContext, ssl.SSLSession]] = {}
"""Per TLS version, a client context and a session it may resume (with a ticket)."""


def make_sessions() -> None:
    """Handshake in memory with a standard library server once per version, keeping a resumable session."""
    if session_contexts:
        return
    with tempfile.TemporaryDirectory() as directory:
        certificates = make_certificates(directory)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(certificates.server.cert_path, certificates.server.key_path)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = stdlib_context(version)
        client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
        client = context.wrap_bio(client_in, client_out, server_hostname="resume.test")
        server = server_context.wrap_bio(server_in, server_out, server_side=True)
        for _ in range(10):
            for step in (client.do_handshake, server.do_handshake):
                try:
                    step()
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        try:
            client.read()  # takes in the TLS 1.3 session tickets
        except ssl.SSLWantReadError:
            pass
        session = client.session
        assert session is not None and session.has_ticket, version
        session_contexts[version] = (context, session)


# A reference reader, written apart from the one under test


class NotAHello(Exception):
    """The bytes are not (the start of) a ClientHello the balancer accepts."""


def split_vector(data: bytes, size: int) -> tuple[bytes, bytes]:
    """The vector with a C{size}-byte length at the start of C{data}, and the bytes after it."""
    if len(data) < size or len(data) < size + int.from_bytes(data[:size], "big"):
        raise NotAHello("a vector runs past its end")
    end = size + int.from_bytes(data[:size], "big")
    return data[size:end], data[end:]


def host_names(extension_data: bytes) -> list[bytes]:
    """The C{host_name} entries of a C{server_name} extension (RFC 6066 section 3)."""
    entries, rest = split_vector(extension_data, 2)
    if rest or not entries:
        raise NotAHello("not one non-empty server name list")
    found = []
    while entries:
        kind = entries[0]
        name, entries = split_vector(entries[1:], 2)
        if kind == 0:
            found.append(name)
    return found


def reference_name(body: bytes) -> str | None:
    """
    The host name of a ClientHello body (RFC 8446 section 4.1.2), checked
    as Go's crypto/tls does: one host name at most, not empty, no trailing
    dot (and ASCII, as the balancer wants); C{None} when there is none.
    """
    if len(body) < 34:
        raise NotAHello("no version and random")
    rest = body[34:]
    for size in (1, 2, 1):  # session id, cipher suites, compression methods
        _, rest = split_vector(rest, size)
    if not rest:
        return None
    block, rest = split_vector(rest, 2)
    if rest:
        raise NotAHello("bytes after the extensions")
    seen: set[int] = set()
    names: list[bytes] = []
    while block:
        if len(block) < 4:
            raise NotAHello("an extension runs past the block")
        kind = int.from_bytes(block[:2], "big")
        data, block = split_vector(block[2:], 2)
        if kind in seen:
            raise NotAHello("an extension appears twice")
        seen.add(kind)
        if kind == 0:
            names = host_names(data)
            if len(names) > 1:
                raise NotAHello("two host names")
            if names and (not names[0] or not names[0].isascii() or names[0].endswith(b".")):
                raise NotAHello("a bad host name")
    return names[0].decode("ascii") if names else None


def reference_outcome(data: bytes) -> tuple[bool, str | None]:
    """
    Whether a client that sends C{data} (and then nothing) is routed, and by
    which name: routed when the first handshake records hold a whole
    ClientHello of at most 16 KiB ending within the first
    L{MAX_HELLO_BYTES} bytes (RFC 8446 section 5.1: records of type 22,
    version 3.x, 1 to 2^14 bytes; a message may span records).
    """
    message = b""
    at = 0
    try:
        while True:
            header = data[at : at + _RECORD_HEADER]
            if len(header) < _RECORD_HEADER:
                raise NotAHello("no whole hello")
            length = int.from_bytes(header[3:5], "big")
            if header[0] != 22 or header[1] != 3 or not 0 < length <= _MAX_FRAGMENT:
                raise NotAHello("not a handshake record")
            fragment = data[at + _RECORD_HEADER : at + _RECORD_HEADER + length]
            start = at + _RECORD_HEADER
            message += fragment
            at = start + length
            if message[:1] not in (b"", b"\x01"):
                raise NotAHello("not a ClientHello")
            if len(message) < 4:
                continue
            size = 4 + int.from_bytes(message[1:4], "big")
            if size > _MAX_FRAGMENT:
                raise NotAHello("a hello over 16 KiB")
            if len(message) >= size:
                if start + len(fragment) - (len(message) - size) > MAX_HELLO_BYTES:
                    raise NotAHello("a hello ending past the cap")
                return True, reference_name(message[4:size])
            if len(fragment) < length:
                raise NotAHello("no whole hello")
    except NotAHello:
        return False, None


# Strategies

Hello = tuple[bytes, str | None]
"""A first flight and the host name its ClientHello carries."""


label = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?\Z")
dns_names = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(label, min_size=0, max_size=6),
    st.from_regex(r"\A[a-zA-Z]{2,12}\Z"),
)
"""Host names the standard library sends (letters in the last label, so never an IP address)."""

ascii_names = st.text(st.characters(max_codepoint=127), min_size=1, max_size=300).filter(lambda n: not n.endswith("."))
"""Every name the reader accepts: any ASCII, not empty, not ending with a dot."""

printable = st.characters(min_codepoint=33, max_codepoint=126)
openssl_names = st.one_of(dns_names, st.text(printable, min_size=1, max_size=255))
alpn_protocols = st.lists(st.binary(min_size=1, max_size=40), max_size=6)


@st.composite
def openssl_hellos(draw: Callable[..., Any]) -> Hello:
    """A pyOpenSSL client's ClientHello with random name, ALPN, version and extensions, and its name."""
    name = draw(st.none() | openssl_names.filter(lambda n: not n.endswith(".")))
    hello = client_hello(
        None if name is None else name.encode("ascii"),
        draw(alpn_protocols),
        draw(st.sampled_from([SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])),
        tickets=draw(st.booleans()),
        padding=draw(st.booleans()),
        srtp=draw(st.booleans()),
        ocsp=draw(st.booleans()),
    )
    return hello, name


@st.composite
def stdlib_hellos(draw: Callable[..., Any]) -> Hello:
    """A standard library client's ClientHello, sometimes resuming a session, and its name."""
    name = draw(st.none() | dns_names)
    version = draw(st.sampled_from([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]))
    if draw(st.booleans()):
        make_sessions()
        return stdlib_hello(name, max_version=version, session=session_contexts[version][1]), name
    alpn = draw(st.lists(st.text(printable, min_size=1, max_size=30), max_size=5))
    return stdlib_hello(name, alpn, version), name


bad_names = st.one_of(
    st.just(b""),
    ascii_names.map(lambda n: n.encode("ascii") + b"."),
    st.tuples(ascii_names, st.characters(min_codepoint=128)).map(lambda t: (t[0] + t[1]).encode()),
    st.binary(max_size=40),
)
"""Names the reader must refuse: empty, ending with a dot, not ASCII, anything."""

DEFECTS = ("", "type", "bad name", "two names", "twice", "trailing")

grease = st.integers(0, 15).map(lambda n: (n << 12) | 0x0A0A | (n << 4))


@st.composite
def hand_built_hellos(draw: Callable[..., Any], hostile: bool = False) -> Hello:
    """
    A ClientHello built field by field, in one record, and the host name it carries.

    Its C{server_name} extension sits anywhere among up to 20 others
    (GREASE, unknown, C{padding} of up to 4 KiB, a C{session_ticket} of up to
    8 KiB); its name list may hold entries of other name types around the
    host name; some hellos have no extension block at all.

    With C{hostile}, the hello may also have one of L{DEFECTS}, the ways a
    reader must notice: another handshake type, a name that is empty, not
    ASCII or ends with a dot, two host names, an extension twice, bytes
    after the extensions (the name returned is then meaningless).
    """
    defect = draw(st.sampled_from(DEFECTS)) if hostile else ""
    name = draw(bad_names if defect == "bad name" else st.none() | ascii_names.map(lambda n: n.encode("ascii")))
    kinds = draw(st.lists(st.integers(1, 0xFFFF) | grease, unique=True, max_size=20))
    extensions = [extension(kind, draw(st.binary(max_size=64))) for kind in kinds if kind not in (21, 35)]
    if draw(st.booleans()):
        extensions.append(extension(21, bytes(draw(st.integers(0, 4096)))))
    if draw(st.booleans()):
        extensions.append(extension(35, draw(st.binary(min_size=0, max_size=8192))))
    if name is not None:
        others = draw(st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=30)), max_size=3))
        entries = [bytes([kind]) + vector(2, value) for kind, value in others]
        for _ in range(2 if defect == "two names" else 1):
            entries.insert(draw(st.integers(0, len(entries))), b"\x00" + vector(2, name))
        extensions.insert(draw(st.integers(0, len(extensions))), extension(0, vector(2, b"".join(entries))))
    if defect == "twice" and extensions:
        extensions.insert(draw(st.integers(0, len(extensions))), draw(st.sampled_from(extensions)))
    body = (
        draw(st.sampled_from([b"\x03\x01", b"\x03\x03"]))
        + draw(st.binary(min_size=32, max_size=32))
        + vector(1, draw(st.binary(max_size=32)))
        + vector(2, draw(st.lists(st.binary(min_size=2, max_size=2), min_size=1, max_size=64).map(b"".join)))
        + vector(1, draw(st.sampled_from([b"\x00", b"\x01\x00"])))
    )
    if extensions or draw(st.booleans()):
        body += vector(2, b"".join(extensions))
    if defect == "trailing":
        body += draw(st.binary(min_size=1, max_size=2))
    kind = draw(st.sampled_from([0, 2, 11, 255])) if defect == "type" else 1
    flight = records(handshake(body, kind), [_MAX_FRAGMENT])
    return flight, None if name is None else name.decode("ascii", "replace")


any_hello = st.one_of(openssl_hellos(), stdlib_hellos(), hand_built_hellos())
"""A whole first flight (the hello in one record) and its name."""


@st.composite
def reframed(draw: Callable[..., Any], hellos: st.SearchStrategy[Hello], fit: bool = True) -> Hello:
    """
    A hello re-framed across records of random sizes, often tiny, and its
    name; with C{fit}, the records fit in L{MAX_HELLO_BYTES}.
    """
    flight, name = draw(hellos)
    message = unframe(flight)
    most = (MAX_HELLO_BYTES - len(message)) // _RECORD_HEADER
    smallest = -(-len(message) // most) if fit else 1
    small = st.integers(smallest, max(smallest, 4))
    sizes = draw(st.lists(small | st.integers(smallest, _MAX_FRAGMENT), min_size=1, max_size=8))
    framed = records(message, sizes, draw(st.sampled_from([1, 3])))
    if fit and len(framed) > MAX_HELLO_BYTES:
        framed = records(message, [smallest])
    return framed, name


def split_up(things: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, list[int]]]:
    """Bytes, or a hello, drawn from C{things}, with up to 40 offsets to split the bytes at."""

    def with_cuts(drawn: Any) -> st.SearchStrategy[tuple[Any, list[int]]]:
        data = drawn[0] if isinstance(drawn, tuple) else drawn
        return st.tuples(st.just(drawn), st.lists(st.integers(1, max(1, len(data) - 1)), max_size=40))

    return things.flatmap(with_cuts)


@st.composite
def mutated(draw: Callable[..., Any]) -> bytes:
    """A real or hand-built first flight with bytes overwritten, cut out, inserted or truncated."""
    hellos = st.one_of(any_hello, reframed(hand_built_hellos()), reframed(hand_built_hellos(True)))
    data = bytearray(draw(hellos)[0])
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "cut", "insert", "truncate", "length"]))
        at = draw(st.integers(0, len(data)))
        if op == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del data[at:]
        elif op == "length" and at + 2 <= len(data):
            data[at : at + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


tls_looking = st.builds(
    lambda kind, version, length, rest: bytes([kind, 3, version]) + length.to_bytes(2, "big") + rest,
    st.sampled_from([22, 22, 22, 21, 23]),
    st.integers(0, 5),
    st.integers(0, 0x4100),
    st.binary(max_size=600),
)
"""Bytes that start like a TLS record and go on at random."""

hostile_hellos = reframed(hand_built_hellos(True), fit=False).map(lambda h: h[0])
arbitrary = st.one_of(st.binary(max_size=300), tls_looking, hostile_hellos, hostile_hellos, mutated())


def every_split(data: bytes) -> Iterator[list[int]]:
    """Each two-read delivery of C{data}, then the one-byte-at-a-time one."""
    for at in range(1, len(data)):
        yield [at]
    yield list(range(1, len(data)))


# The tests


class ArbitraryBytesTests(SynchronousTestCase):
    """Whatever a client sends, the protocol routes or closes it, and the split of its reads does not matter."""

    def setUp(self) -> None:
        self.harness = Harness(self)

    def check(self, data: bytes, cuts: Sequence[int]) -> None:
        whole = self.harness.run(data)
        split = self.harness.run(data, cuts)
        self.assertEqual(split, whole, f"{len(chunked(data, cuts))} reads")
        self.assertEqual((whole.routed, whole.name), reference_outcome(data), "the reference reader disagrees")

    @settings(FUZZ, max_examples=300)
    @given(split_up(arbitrary))
    def test_anyBytesAnyChunking(self, case: tuple[bytes, list[int]]) -> None:
        self.check(*case)

    @settings(FUZZ, max_examples=300)
    @given(split_up(mutated()))
    def test_mutatedHellosAnyChunking(self, case: tuple[bytes, list[int]]) -> None:
        self.check(*case)

    @settings(FUZZ, max_examples=4)
    @given(mutated())
    def test_mutatedHelloSplitAtEveryPoint(self, data: bytes) -> None:
        whole = self.harness.run(data)
        for cuts in every_split(data):
            self.assertEqual(self.harness.run(data, cuts), whole, f"split at {cuts[:3]}")


class RealHelloTests(SynchronousTestCase):
    """A real ClientHello is routed by its exact server name, whatever the reads and records."""

    def setUp(self) -> None:
        self.harness = Harness(self)

    def check(self, hello: Hello, cuts: Sequence[int], after: bytes = b"") -> None:
        data, name = hello
        outcome = self.harness.run(data + after, cuts)
        self.assertEqual(outcome, Outcome(True, name, False, data + after))

    @settings(FUZZ, max_examples=60)
    @given(split_up(openssl_hellos()))
    def test_openssl(self, case: tuple[Hello, list[int]]) -> None:
        self.check(*case)

    @settings(FUZZ, max_examples=60)
    @given(split_up(stdlib_hellos()))
    def test_stdlib(self, case: tuple[Hello, list[int]]) -> None:
        self.check(*case)

    @FUZZ
    @given(split_up(hand_built_hellos()), st.binary(max_size=64))
    def test_handBuilt(self, case: tuple[Hello, list[int]], after: bytes) -> None:
        self.check(*case, after=after)

    @FUZZ
    @given(split_up(reframed(any_hello)), st.binary(max_size=64))
    def test_acrossRecords(self, case: tuple[Hello, list[int]], after: bytes) -> None:
        self.check(*case, after=after)

    def test_realHellosSplitAtEveryPoint(self) -> None:
        make_sessions()
        hellos = [
            (client_hello(b"every.split.test", [b"h2", b"http/1.1"], padding=True, ocsp=True), "every.split.test"),
            (stdlib_hello("resumed.test", session=session_contexts[ssl.TLSVersion.TLSv1_3][1]), "resumed.test"),
            (stdlib_hello("old.test", ["h2"], ssl.TLSVersion.TLSv1_2), "old.test"),
            (records(unframe(client_hello(b"a.test")), [700, 1, 9]), "a.test"),
        ]
        for data, name in hellos:
            for cuts in every_split(data):
                self.check((data, name), cuts)

    def test_paddedOpensslHello(self) -> None:
        alpn = [b"x" * 100]
        unpadded = client_hello(b"pad.test", alpn, SSL.TLS1_2_VERSION)
        hello = client_hello(b"pad.test", alpn, SSL.TLS1_2_VERSION, padding=True)
        self.assertEqual((len(unpadded) < 512, len(hello)), (True, _RECORD_HEADER + 512), "OpenSSL padded its hello")
        self.check((hello, "pad.test"), [100, 300])


class LimitTests(SynchronousTestCase):
    """What a client can make the reader do is bounded, and the bounds do not depend on the reads."""

    def setUp(self) -> None:
        self.harness = Harness(self)

    def hello_of(self, framed_size: int, record: int) -> bytes:
        """A hand-built hello named C{a.test} in records of C{record} bytes, padded to C{framed_size} bytes framed."""
        def framed(padding: int) -> bytes:
            body = b"\x03\x03" + bytes(32) + vector(1, b"") + vector(2, b"\x13\x01") + vector(1, b"\x00")
            body += vector(2, extension(0, vector(2, b"\x00" + vector(2, b"a.test"))) + extension(21, bytes(padding)))
            return records(handshake(body), [record])

        padding = 0
        while len(framed(padding)) < framed_size:
            padding += 1
        return framed(padding)

    def test_helloFramedWithinTheCapIsRouted(self) -> None:
        hello = self.hello_of(MAX_HELLO_BYTES, 4000)
        self.assertEqual(len(hello), MAX_HELLO_BYTES)
        for cuts in ([], [MAX_HELLO_BYTES - 1], [4000, 8000]):
            self.assertEqual(self.harness.run(hello, cuts).name, "a.test")

    def test_helloFramedPastTheCapIsClosedWhateverTheReads(self) -> None:
        """
        A hello whose records run past L{MAX_HELLO_BYTES} is refused in one
        read as in many: it used to be routed when it came in one read and
        refused when its first L{MAX_HELLO_BYTES} came in one.
        """
        hello = self.hello_of(MAX_HELLO_BYTES + 1, 4000)
        self.assertEqual(len(hello), MAX_HELLO_BYTES + 1)
        for cuts in ([], [MAX_HELLO_BYTES], [100]):
            self.assertEqual(self.harness.run(hello, cuts), Outcome(False, None, True, b""), cuts)

    def test_oneByteRecordsOneByteAtATimeTakeLinearTime(self) -> None:
        """
        A client sending a hello in one-byte records, one byte per read,
        costs the reader time in proportion to its bytes: the reader used to
        parse every record again on each read, about 15 s of CPU for the
        16 KiB it may send.
        """
        reactor, server, client, transport = arrive()
        message = handshake(bytes(16000))
        data = records(message, [1])[:MAX_HELLO_BYTES]
        started = time.process_time()
        for at in range(len(data)):
            client.dataReceived(data[at : at + 1])
            if transport.disconnecting:
                break
            self.assertLess(time.process_time() - started, 2.0, f"after {at + 1} bytes")
        self.assertTrue(transport.disconnecting)
        self.assertEqual((server.counters.sni_failures, reactor.tcpClients), (1, []))

    def test_halfCloseBeforeAWholeHelloClosesAtOnce(self) -> None:
        """
        A client that ends its stream before a whole hello is closed at
        once, not counted (it left), and nothing waits for C{read_timeout}:
        the connection used to stay open until then, for ever with
        C{read_timeout = 0}.
        """
        for sent in (b"", client_hello(b"a.test")[:50]):
            reactor, server, client, transport = arrive()
            client.dataReceived(sent)
            client.readConnectionLost()
            self.assertTrue(transport.disconnecting, sent)
            self.assertEqual(reactor.getDelayedCalls(), [])
            client.connectionLost(Failure(ConnectionDone()))
            self.assertEqual((server.counters.sni_failures, server.relays, reactor.tcpClients), (0, {}, []))

    def test_halfCloseAfterTheHelloIsRelayed(self) -> None:
        """A client that sends its hello and ends its stream is routed, and the end reaches the backend."""
        reactor, server, client, transport = arrive()
        hello = client_hello(b"a.test")
        client.dataReceived(hello)
        client.readConnectionLost()
        side = reactor.tcpClients[0][2].buildProtocol(None)
        backend = ClientTransport()
        side.makeConnection(backend)
        self.assertEqual((backend.value(), backend.write_closed, transport.disconnecting), (hello, True, False))
