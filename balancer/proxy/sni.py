"""
SNI routing: the server name a TLS client asks for, read from its ClientHello
without terminating TLS, and the backends that may serve that name.

L{ClientHelloReader} reads the first bytes of a connection (TLS records of
content type handshake, RFC 8446 section 5.1, carrying one ClientHello,
section 4.1.2, whose C{server_name} extension is RFC 6066 section 3) as they
arrive; L{parse_client_hello} is the same on bytes at hand.

L{SniRouter} is gobetween's C{balance/middleware/sni.go}: it narrows the
candidates to the backends whose C{sni} matches the name, then leaves the pick
among them to the server's strategy.

L{SniClientSide} is the client side of a relay on a C{protocol = "tcp"}
server with C{[sni]}: it reads the ClientHello, routes by its name, and
relays the bytes read, untouched, first: TLS stays end to end.
"""

from __future__ import annotations

import re
from typing import Sequence

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.backends import Backend
from balancer.config.schema import SniConfig
from balancer.proxy.finished import BAD_HELLO, HELLO_TIMEOUT
from balancer.proxy.sni_path import FirstBytes, IReadsFirst
from balancer.proxy.tcp import ClientSide, IdleTimer, Relay

log = Logger()

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
_RECORD_HEADER = 5
_MAX_FRAGMENT = 1 << 14

MAX_HELLO_BYTES = _MAX_FRAGMENT + _RECORD_HEADER
"""
The most bytes read for a ClientHello (records included): one full record.
A hello whose last byte does not come within them is reported malformed,
whether the bytes came in one read or many; this bounds what a connection
may make the balancer buffer before a backend is chosen.
"""

NEED_MORE = "need_more"
MALFORMED = "malformed"
COMPLETE = "complete"


@attrs.frozen
class SniResult:
    """
    What the first bytes of a connection say.

    @ivar state: L{NEED_MORE} (a valid prefix of a ClientHello; read more),
        L{MALFORMED} (not TLS, or not a ClientHello that parses) or
        L{COMPLETE} (a whole ClientHello was parsed).
    @ivar hostname: with L{COMPLETE}, the requested host name as sent, or
        C{None} when the hello has no C{server_name} extension.
    @ivar reason: with L{MALFORMED}, why, for the log.
    """

    state: str
    hostname: str | None = None
    reason: str = ""


_NEED_MORE = SniResult(NEED_MORE)


class _Malformed(Exception):
    """Raised inside the parser; becomes a L{MALFORMED} result."""


def _malformed(reason: str) -> SniResult:
    return SniResult(MALFORMED, reason=reason)


def parse_client_hello(data: bytes) -> SniResult:
    """
    Read the server name from the start of a TLS connection.

    The ClientHello may be split across several handshake records; each
    check is made as soon as the bytes it needs are there, so non-TLS input
    is refused on its first byte.  The result depends on the bytes only: a
    L{NEED_MORE} prefix grows into the same verdict as any longer one.

    @param data: every byte received from the client so far.
    @return: a L{SniResult}.
    """
    return ClientHelloReader().feed(data)


class ClientHelloReader:
    """
    Reads a ClientHello as its bytes arrive, looking at each byte once.

    Feeding the bytes of a connection in any number of reads gives the
    verdict L{parse_client_hello} gives on all of them at once; each
    L{feed} costs time in proportion to the bytes it is given, so a client
    sending its hello in one-byte records, one byte per read, costs no more
    than one sending it whole.
    """

    def __init__(self) -> None:
        self._result = _NEED_MORE
        self._received = 0
        self._header = b""
        self._record_left = 0
        self._message = bytearray()
        self._needed: int | None = None

    def feed(self, data: bytes) -> SniResult:
        """
        Take the next bytes of the connection.

        @return: L{NEED_MORE} until the verdict is known, then the verdict
            (again on every later call).
        """
        if self._result.state == NEED_MORE:
            self._result = self._read(data)
        return self._result

    def _read(self, data: bytes) -> SniResult:
        at = 0
        while at < len(data):
            if not self._record_left:
                take = _RECORD_HEADER - len(self._header)
                self._header += data[at : at + take]
                at += take
                problem = _check_record_header(self._header)
                if problem:
                    return _malformed(problem)
                if len(self._header) < _RECORD_HEADER:
                    break
                self._record_left = int.from_bytes(self._header[3:5], "big")
                self._header = b""
                continue
            fragment = data[at : at + self._record_left]
            at += len(fragment)
            self._record_left -= len(fragment)
            message = self._message
            message += fragment
            if message[0] != _CLIENT_HELLO:
                return _malformed(f"handshake message type {message[0]} is not a ClientHello (1)")
            if self._needed is None and len(message) >= 4:
                self._needed = 4 + int.from_bytes(message[1:4], "big")
                if self._needed + _RECORD_HEADER > MAX_HELLO_BYTES:
                    limit = MAX_HELLO_BYTES - _RECORD_HEADER
                    return _malformed(f"ClientHello of {self._needed} bytes is larger than {limit}")
            if self._needed is not None and len(message) >= self._needed:
                # The bytes of the connection up to the hello's last one.
                end = self._received + at - (len(message) - self._needed)
                if end > MAX_HELLO_BYTES:
                    return _too_long()
                try:
                    return SniResult(COMPLETE, hostname=_server_name(bytes(message[4 : self._needed])))
                except _Malformed as e:
                    return _malformed(str(e))
        self._received += len(data)
        if self._received >= MAX_HELLO_BYTES:
            return _too_long()
        return _NEED_MORE


def _too_long() -> SniResult:
    return _malformed(f"no complete ClientHello within {MAX_HELLO_BYTES} bytes")


def _check_record_header(header: bytes) -> str:
    """Why these (up to 5) bytes cannot start a handshake record, or C{""}."""
    if len(header) >= 1 and header[0] != _HANDSHAKE:
        return f"not a TLS handshake record (first byte 0x{header[0]:02x})"
    if len(header) >= 2 and header[1] != 3:
        return f"not a TLS record version (0x{header[1]:02x}..)"
    if len(header) >= 5:
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            return "empty handshake record"
        if length > _MAX_FRAGMENT:
            return f"record of {length} bytes is larger than {_MAX_FRAGMENT}"
    return ""


def _skip_vector(body: bytes, at: int, size: int, what: str) -> int:
    """Where the vector at C{at}, with a C{size}-byte length, ends; L{_Malformed} past the end of C{body}."""
    end = at + size
    if end > len(body):
        raise _Malformed(f"ClientHello truncated in {what}")
    end += int.from_bytes(body[at:end], "big")
    if end > len(body):
        raise _Malformed(f"ClientHello truncated in {what}")
    return end


def _server_name(body: bytes) -> str | None:
    """
    The host name in a ClientHello body (after its 4-byte header), or C{None}.

    Read with offsets into C{body}, one pass over its extensions: this runs
    once per connection routed by SNI.
    """
    at = 2 + 32
    if at > len(body):
        raise _Malformed("ClientHello truncated in version and random")
    at = _skip_vector(body, at, 1, "session id")
    at = _skip_vector(body, at, 2, "cipher suites")
    at = _skip_vector(body, at, 1, "compression methods")
    end = len(body)
    if at == end:
        return None
    last = _skip_vector(body, at, 2, "extensions")
    if last != end:
        raise _Malformed("bytes after the extensions")
    at += 2
    hostname: str | None = None
    seen: set[int] = set()
    while at < end:
        if at + 2 > end:
            raise _Malformed("ClientHello truncated in extension type")
        kind = body[at] << 8 | body[at + 1]
        data_end = at + 4
        if data_end > end or (data_end := data_end + (body[at + 2] << 8 | body[at + 3])) > end:
            raise _Malformed("ClientHello truncated in extension data")
        if kind in seen:
            raise _Malformed(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            hostname = _host_name(body[at + 4 : data_end])
        at = data_end
    return hostname


def _host_name(extension: bytes) -> str | None:
    """The C{host_name} entry of a C{server_name} extension (RFC 6066), checked as Go does."""
    end = _skip_vector(extension, 0, 2, "server name list")
    if end != len(extension) or end == 2:
        raise _Malformed("server_name extension is not one non-empty list")
    at = 2
    found: str | None = None
    while at < end:
        kind = extension[at]
        name_end = _skip_vector(extension, at + 1, 2, "server name")
        name = extension[at + 3 : name_end]
        at = name_end
        if kind != _HOST_NAME:
            continue
        if found is not None:
            raise _Malformed("more than one host name")
        if not name:
            raise _Malformed("empty server name")
        try:
            found = name.decode("ascii")
        except UnicodeDecodeError:
            raise _Malformed("server name is not ASCII") from None
        if found.endswith("."):
            raise _Malformed("server name ends with a dot")
    return found


REJECT = "reject"
"""Returned by L{SniRouter.choose} when the connection must be closed."""


class SniRouter:
    """
    Narrows a server's candidate backends by the client's SNI, as gobetween does.

    Backends match the requested name (the empty name when the hello had
    none) by their C{sni} (the empty name when they have none):

      - C{exact}: the names are equal, ignoring case;
      - C{regexp}: the backend's C{sni} is a regular expression found
        anywhere in the name (Go's C{regexp.MatchString}: not anchored, case
        sensitive); a backend without C{sni} matches only the empty name;
        an invalid expression matches nothing (and is logged).

    When no backend matches, C{unexpected} decides: C{reject} closes the
    connection, C{any} offers all candidates, C{default} offers those
    without C{sni}, or none at all when the hello had no name.  So with
    C{exact}, a client without SNI goes to the backends without C{sni}.
    """

    def __init__(self, matching: str = "exact", unexpected: str = "default") -> None:
        if matching not in ("exact", "regexp"):
            raise ValueError(f'unknown hostname matching strategy "{matching}" (known: exact, regexp)')
        if unexpected not in ("default", "reject", "any"):
            raise ValueError(f'unknown unexpected hostname strategy "{unexpected}" (known: default, reject, any)')
        self.matching = matching
        self.unexpected = unexpected

    @classmethod
    def from_config(cls, config: SniConfig) -> SniRouter:
        """The router of a C{[sni]} section."""
        return cls(config.hostname_matching_strategy, config.unexpected_hostname_strategy)

    def choose(self, hostname: str | None, backends: Sequence[Backend]) -> list[Backend] | str:
        """
        The backends that may serve C{hostname}, or L{REJECT}.

        @param hostname: the name from L{parse_client_hello}, C{None} without SNI.
        @param backends: the candidates (live, active, under their limits).
        @return: the candidates to pick from with the server's strategy (an
            empty list when none may serve it), or L{REJECT}.
        """
        requested = hostname or ""
        matched = [b for b in backends if self._matches(requested, b.spec.sni or "")]
        if matched:
            return matched
        if self.unexpected == "reject":
            return REJECT
        if self.unexpected == "any":
            return list(backends)
        if not requested:
            return []
        return [b for b in backends if self._matches("", b.spec.sni or "")]

    def _matches(self, requested: str, sni: str) -> bool:
        if self.matching == "exact":
            return requested.lower() == sni.lower()
        if not sni and requested:
            return False
        try:
            return re.search(sni, requested) is not None
        except re.error as e:
            log.error("backend sni {sni!r} is not a regular expression: {error}", sni=sni, error=e)
            return False


class SniClientSide(ClientSide):
    """
    A client routed by the server name of its ClientHello, read without
    terminating TLS.

    Once admitted, the client is read (and nothing sent to it) until a
    L{ClientHelloReader} has a whole hello; then it is paused and routed,
    and the bytes read go to the backend first, as they came.  A client
    whose first bytes are not a ClientHello (L{MALFORMED}), or that has not
    sent a whole one within C{[sni] read_timeout} (0: the server's
    C{client_idle_timeout}, and no limit without one either), is closed
    and counted in the server's C{sni_failures}; one that leaves before, or
    ends its stream before, is closed and not counted.

    On a data path that reads a client only when asked (L{IReadsFirst}: the
    relay engine), the hello is read through it, and the rest spliced.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self._reader: ClientHelloReader | None = None
        self._received: list[bytes] = []
        self._deadline: IdleTimer | None = None
        self._first: FirstBytes | None = None

    def connectionMade(self) -> None:
        """Admit the client, then read its hello."""
        if not self.relay.admit():
            return
        self._reader = ClientHelloReader()
        server = self.relay.server
        read_timeout = server.config.sni.read_timeout if server.config.sni is not None else 0.0
        # Without a read_timeout, a silent client is idle: client_idle_timeout, if set, bounds the wait.
        timeout = read_timeout or server.config.client_idle_timeout
        if timeout:
            which = "read_timeout" if read_timeout else "client_idle_timeout"
            self._deadline = IdleTimer(
                server.clock, timeout, lambda: self._fail(f"no ClientHello within {which}", HELLO_TIMEOUT)
            )
        path = server.path
        if IReadsFirst.providedBy(path):
            self._first = path.read_first(self)

    def dataReceived(self, data: bytes) -> None:
        """The hello's bytes are kept until it is whole; later bytes go to the relay."""
        reader = self._reader
        if reader is None:
            self.relay.from_client(data)
            return
        self._received.append(data)
        result = reader.feed(data)
        if result.state == NEED_MORE:
            return
        if result.state == MALFORMED:
            self._fail(result.reason, BAD_HELLO)
            return
        self.relay.early_data.append(b"".join(self._received))
        self._stop_reading()
        self.relay.route(result.hostname)

    def readConnectionLost(self) -> None:
        """
        The client ended its stream: before a whole hello, it cannot be
        routed and is closed (not counted, as one that leaves); after, the
        end is relayed.
        """
        if self._reader is None:
            super().readConnectionLost()
            return
        self.read_closed = True
        self._stop_reading()
        self.transport.loseConnection()

    def _fail(self, why: str, reason: str) -> None:
        self._stop_reading()
        self.relay.ends_because(reason)
        server = self.relay.server
        server.counters.sni_failures += 1
        log.info(
            "{server}: closing client {client}: {why}",
            server=server.name,
            client=self.relay.client_address.host,
            why=why,
        )
        self.transport.loseConnection()

    def _stop_reading(self) -> None:
        if self._first is not None:
            self._first.stop()
            self._first = None
        self._reader = None
        self._received = []
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Stop waiting for the hello, then end as any client does."""
        self._stop_reading()
        super().connectionLost(reason)
