"""
Error answers written straight onto a connection, before or instead of any
route: a malformed or too large request, a deadline passed, no room for
another connection.  The body (L{admin.errorbody}) says why in the API's own
error form, chosen by the request target when it is known.
"""

from __future__ import annotations

import typing

from twisted.internet.interfaces import IAddress, ITransport

from admin.errorbody import error_body

#: RFC 9110's reason phrases for the codes written here (Twisted's table has older ones, and no 431).
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


def error_answer(code: int, detail: str, target: bytes = b"", headers: tuple[bytes, ...] = ()) -> bytes:
    """
    A whole HTTP/1.1 answer: status C{code}, the JSON error body saying
    C{detail}, and C{Connection: close} (every such answer ends the connection).

    @param target: the request target, when known (C{b""} otherwise: gobetween's form).
    @param headers: further header lines, without their line ends.
    """
    body = error_body(detail, target)
    head = [
        b"HTTP/1.1 %d %s" % (code, REASONS[code]),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def target_of(request_line: bytes) -> bytes:
    """The request target of a (maybe partial) request line: its second word, or C{b""}."""
    words = request_line.split(b" ", 2)
    return words[1] if len(words) > 1 else b""


class Connection(typing.Protocol):
    """What writing an answer and closing needs of a transport (TCP's, TLS's, or a test's C{StringTransport})."""

    disconnecting: bool

    def write(self, data: bytes) -> None:
        """Send C{data}."""

    def getPeer(self) -> IAddress:
        """The client's address."""

    def loseConnection(self) -> None:
        """Close once what was written is sent."""

    def abortConnection(self) -> None:
        """Close at once."""


def connection(transport: ITransport | None) -> Connection:
    """
    The transport of a connected protocol, as a L{Connection}.

    @raise RuntimeError: when the protocol is not connected.
    """
    if transport is None:
        raise RuntimeError("the protocol is not connected")
    # Every stream transport the reactor gives a protocol (TCP, TLS over TCP) can abort;
    # ITransport does not say so, ITCPTransport does not declare disconnecting.
    return typing.cast(Connection, transport)
