"""Tests for L{balancer.proxy.sni}: ClientHello parsing and SNI routing."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from balancer.backends import Backend
from balancer.config.addresses import BackendSpec
from balancer.config.schema import SniConfig
from balancer.proxy.sni import (
    COMPLETE,
    MALFORMED,
    MAX_HELLO_BYTES,
    NEED_MORE,
    REJECT,
    SniResult,
    SniRouter,
    parse_client_hello,
)
from tests.support.hellos import client_hello




def records(message: bytes, size: int) -> bytes:
    """C{message} re-framed as handshake records of at most C{size} bytes each."""
    return b"".join(
        b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (message[i : i + size] for i in range(0, len(message), size))
    )


def handshake_message(body: bytes, kind: int = 1) -> bytes:
    """A handshake message of type C{kind} around C{body}."""
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def vector(size: int, data: bytes) -> bytes:
    """C{data} prefixed by its length in C{size} bytes."""
    return len(data).to_bytes(size, "big") + data


def hello_body(extensions: bytes | None) -> bytes:
    """A minimal ClientHello body with the given extension block (none at all when C{None})."""
    body = b"\x03\x03" + b"\x00" * 32 + vector(1, b"") + vector(2, b"\x13\x01") + vector(1, b"\x00")
    if extensions is not None:
        body += vector(2, extensions)
    return body


def extension(kind: int, data: bytes) -> bytes:
    """One extension."""
    return kind.to_bytes(2, "big") + vector(2, data)


def server_name(*entries: tuple[int, bytes]) -> bytes:
    """A C{server_name} extension listing C{(name type, name)} entries."""
    return extension(0, vector(2, b"".join(bytes([kind]) + vector(2, name) for kind, name in entries)))


def hand_made(extensions: bytes | None) -> bytes:
    """One record holding a hand-made ClientHello."""
    return records(handshake_message(hello_body(extensions)), 1 << 14)


class RealHelloTests(SynchronousTestCase):
    """ClientHellos written by OpenSSL."""

    def test_hostname(self) -> None:
        self.assertEqual(parse_client_hello(client_hello(b"example.com")), SniResult(COMPLETE, "example.com"))

    def test_noSni(self) -> None:
        self.assertEqual(parse_client_hello(client_hello()), SniResult(COMPLETE, None))

    def test_tls12OnlyClient(self) -> None:
        hello = client_hello(b"old.example", max_version=SSL.TLS1_2_VERSION)
        self.assertEqual(parse_client_hello(hello).hostname, "old.example")

    def test_caseIsKept(self) -> None:
        self.assertEqual(parse_client_hello(client_hello(b"WWW.Example.com")).hostname, "WWW.Example.com")

    def test_bytesAfterTheHelloAreIgnored(self) -> None:
        hello = client_hello(b"example.com") + b"\x17\x03\x03\x00\x05hello"
        self.assertEqual(parse_client_hello(hello).hostname, "example.com")

    def test_everyPrefixNeedsMore(self) -> None:
        hello = client_hello(b"split.example")
        for end in range(len(hello)):
            result = parse_client_hello(hello[:end])
            self.assertEqual(result, SniResult(NEED_MORE), f"prefix of {end} bytes")
        self.assertEqual(parse_client_hello(hello), SniResult(COMPLETE, "split.example"))

    def test_helloAcrossRecords(self) -> None:
        message = client_hello(b"many.example")[5:]
        for size in (1, 3, 100, 512):
            framed = records(message, size)
            self.assertEqual(parse_client_hello(framed), SniResult(COMPLETE, "many.example"), f"records of {size}")

    def test_everyPrefixAcrossRecordsNeedsMore(self) -> None:
        framed = records(client_hello(b"many.example")[5:], 400)
        for end in range(len(framed)):
            self.assertEqual(parse_client_hello(framed[:end]).state, NEED_MORE, f"prefix of {end} bytes")
        self.assertEqual(parse_client_hello(framed).hostname, "many.example")


class NotTlsTests(SynchronousTestCase):
    """Input that cannot be a ClientHello is refused as soon as that shows."""

    def assertMalformed(self, data: bytes, reason: str) -> None:
        result = parse_client_hello(data)
        self.assertEqual(result.state, MALFORMED, result)
        self.assertIn(reason, result.reason)

    def test_emptyNeedsMore(self) -> None:
        self.assertEqual(parse_client_hello(b"").state, NEED_MORE)

    def test_httpOnFirstByte(self) -> None:
        self.assertMalformed(b"G", "first byte 0x47")
        self.assertMalformed(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "not a TLS handshake record")

    def test_sslv2Hello(self) -> None:
        self.assertMalformed(b"\x80\x2e\x01\x00\x02", "first byte 0x80")

    def test_badRecordVersion(self) -> None:
        self.assertMalformed(b"\x16\x04", "record version")

    def test_otherRecordType(self) -> None:
        self.assertMalformed(b"\x15\x03\x03\x00\x02\x02\x28", "first byte 0x15")

    def test_emptyRecord(self) -> None:
        self.assertMalformed(b"\x16\x03\x01\x00\x00", "empty")

    def test_oversizedRecord(self) -> None:
        self.assertMalformed(b"\x16\x03\x01\x40\x01", "larger than")

    def test_notAClientHello(self) -> None:
        self.assertMalformed(b"\x16\x03\x03\x00\x01\x02", "not a ClientHello")
        self.assertMalformed(records(handshake_message(b"\x00" * 40, kind=2), 100), "not a ClientHello")

    def test_laterRecordNotHandshake(self) -> None:
        framed = records(client_hello(b"example.com")[5:], 100)
        broken = framed[:105] + b"\x17" + framed[106:]
        self.assertMalformed(broken, "first byte 0x17")

    def test_oversizedHello(self) -> None:
        self.assertMalformed(b"\x16\x03\x01\x00\x04\x01\x00\x40\x00", "larger than")

    def test_capOnBytesRead(self) -> None:
        message = handshake_message(b"\x00" * 16000)
        framed = records(message, 1)
        self.assertEqual(parse_client_hello(framed[: MAX_HELLO_BYTES - 1]).state, NEED_MORE)
        self.assertMalformed(framed[:MAX_HELLO_BYTES], f"within {MAX_HELLO_BYTES} bytes")

    def test_randomGarbage(self) -> None:
        garbage = bytes((i * 97 + 13) % 256 for i in range(2000))
        self.assertEqual(parse_client_hello(garbage).state, MALFORMED)


class HandMadeHelloTests(SynchronousTestCase):
    """Edge cases of the ClientHello body and its C{server_name} extension."""

    def test_noExtensionsAtAll(self) -> None:
        self.assertEqual(parse_client_hello(hand_made(None)), SniResult(COMPLETE, None))

    def test_otherExtensionsOnly(self) -> None:
        self.assertEqual(parse_client_hello(hand_made(extension(43, b"\x02\x03\x04"))), SniResult(COMPLETE, None))

    def test_hostNameAmongOtherExtensions(self) -> None:
        extensions = extension(43, b"\x02\x03\x04") + server_name((0, b"a.example")) + extension(10, b"\x00\x02\x00\x1d")
        self.assertEqual(parse_client_hello(hand_made(extensions)).hostname, "a.example")

    def test_otherNameTypesAreSkipped(self) -> None:
        self.assertEqual(parse_client_hello(hand_made(server_name((7, b"x"), (0, b"b.example")))).hostname, "b.example")
        self.assertEqual(parse_client_hello(hand_made(server_name((7, b"x")))).hostname, None)

    def assertMalformed(self, data: bytes, reason: str) -> None:
        result = parse_client_hello(data)
        self.assertEqual(result.state, MALFORMED, result)
        self.assertIn(reason, result.reason)

    def test_twoHostNames(self) -> None:
        self.assertMalformed(hand_made(server_name((0, b"a.example"), (0, b"b.example"))), "more than one")

    def test_emptyHostName(self) -> None:
        self.assertMalformed(hand_made(server_name((0, b""))), "empty server name")

    def test_nonAsciiHostName(self) -> None:
        self.assertMalformed(hand_made(server_name((0, "bücher.example".encode()))), "not ASCII")

    def test_trailingDot(self) -> None:
        self.assertMalformed(hand_made(server_name((0, b"example.com."))), "ends with a dot")

    def test_duplicateExtension(self) -> None:
        self.assertMalformed(hand_made(server_name((0, b"a.example")) * 2), "appears twice")

    def test_emptyServerNameList(self) -> None:
        self.assertMalformed(hand_made(extension(0, vector(2, b""))), "non-empty list")

    def test_truncatedBody(self) -> None:
        body = hello_body(server_name((0, b"a.example")))
        self.assertMalformed(records(handshake_message(body[:-3]), 1 << 14), "truncated")

    def test_bytesAfterExtensions(self) -> None:
        body = hello_body(server_name((0, b"a.example"))) + b"\x00"
        self.assertMalformed(records(handshake_message(body), 1 << 14), "after the extensions")

    def test_extensionLongerThanItsBlock(self) -> None:
        lying = (0).to_bytes(2, "big") + (500).to_bytes(2, "big") + b"\x00\x05"
        self.assertMalformed(hand_made(lying), "truncated")


def backend(port: int, sni: str | None = None) -> Backend:
    """A backend on 127.0.0.1:C{port} serving C{sni}."""
    return Backend(BackendSpec("127.0.0.1", port, sni=sni))


A = backend(1, "a.example")
A2 = backend(2, "A.Example")
B = backend(3, "b.example")
PLAIN = backend(4)
PLAIN2 = backend(5)
ALL = [A, A2, B, PLAIN, PLAIN2]
NAMED = [A, A2, B]


class ExactRouterTests(SynchronousTestCase):
    """C{hostname_matching_strategy = "exact"}."""

    def test_matchesIgnoringCase(self) -> None:
        self.assertEqual(SniRouter("exact").choose("a.EXAMPLE", ALL), [A, A2])

    def test_unexpectedDefaultGoesToBackendsWithoutSni(self) -> None:
        self.assertEqual(SniRouter("exact", "default").choose("c.example", ALL), [PLAIN, PLAIN2])

    def test_unexpectedDefaultWithoutPlainBackends(self) -> None:
        self.assertEqual(SniRouter("exact", "default").choose("c.example", NAMED), [])

    def test_unexpectedReject(self) -> None:
        self.assertIs(SniRouter("exact", "reject").choose("c.example", ALL), REJECT)

    def test_unexpectedAny(self) -> None:
        self.assertEqual(SniRouter("exact", "any").choose("c.example", ALL), ALL)

    def test_noSniMatchesBackendsWithoutSni(self) -> None:
        for unexpected in ("default", "reject", "any"):
            self.assertEqual(SniRouter("exact", unexpected).choose(None, ALL), [PLAIN, PLAIN2], unexpected)

    def test_noSniAndOnlyNamedBackends(self) -> None:
        self.assertEqual(SniRouter("exact", "default").choose(None, NAMED), [])
        self.assertIs(SniRouter("exact", "reject").choose(None, NAMED), REJECT)
        self.assertEqual(SniRouter("exact", "any").choose(None, NAMED), NAMED)

    def test_emptySniIsNoSni(self) -> None:
        empty = backend(9, "")
        self.assertEqual(SniRouter("exact").choose(None, [A, empty]), [empty])
        self.assertEqual(SniRouter("exact").choose("c.example", [A, empty]), [empty])

    def test_fromConfig(self) -> None:
        router = SniRouter.from_config(SniConfig(unexpected_hostname_strategy="any", hostname_matching_strategy="regexp"))
        self.assertEqual((router.matching, router.unexpected), ("regexp", "any"))

    def test_unknownStrategies(self) -> None:
        self.assertRaises(ValueError, SniRouter, "glob")
        self.assertRaises(ValueError, SniRouter, "exact", "drop")


class RegexpRouterTests(SynchronousTestCase):
    """C{hostname_matching_strategy = "regexp"}: Go's unanchored C{MatchString}."""

    def test_pattern(self) -> None:
        wildcard = backend(6, r"^[a-z]+\.example\.com$")
        router = SniRouter("regexp", "reject")
        self.assertEqual(router.choose("www.example.com", [wildcard, PLAIN]), [wildcard])
        self.assertIs(router.choose("example.com", [wildcard, PLAIN]), REJECT)

    def test_unanchoredLikeGo(self) -> None:
        loose = backend(6, "example")
        self.assertEqual(SniRouter("regexp", "reject").choose("www.example.org", [loose]), [loose])

    def test_caseSensitiveLikeGo(self) -> None:
        self.assertIs(SniRouter("regexp", "reject").choose("A.EXAMPLE", [A, B]), REJECT)

    def test_backendWithoutSniMatchesOnlyNoSni(self) -> None:
        router = SniRouter("regexp", "reject")
        self.assertIs(router.choose("x.example", [PLAIN]), REJECT)
        self.assertEqual(router.choose(None, [A, PLAIN]), [PLAIN])

    def test_unexpectedDefault(self) -> None:
        self.assertEqual(SniRouter("regexp", "default").choose("c.example", ALL), [PLAIN, PLAIN2])

    def test_invalidPatternMatchesNothing(self) -> None:
        broken = backend(7, "([")
        self.assertEqual(SniRouter("regexp", "any").choose("a.example", [broken, A]), [A])
        self.assertIs(SniRouter("regexp", "reject").choose("([", [broken]), REJECT)
