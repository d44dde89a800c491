"""
L{ChunkedFraming}: the framing of a C{Transfer-Encoding: chunked} request
body, checked by the same rules as Twisted's decoder (RFC 9112 §7.1), ahead
of it.  L{admin.channel.ApiChannel} feeds each piece of a chunked body here
first, so a malformed body is refused with the API's JSON 400 before
Twisted would answer its own bare 400 (Twisted has no public hook for that
answer).  The chunks' contents are not kept: Twisted decodes them.
"""

from __future__ import annotations

import string

#: The longest chunk-size line (the size and its extensions), in bytes, as Twisted reads it.
MAX_SIZE_LINE = 1024

#: The most bytes of trailer fields after the last chunk, as Twisted reads them.
MAX_TRAILERS = 1 << 16

_HEX = frozenset(string.hexdigits.encode("ascii"))

#: Bytes a chunk extension may hold: tab, visible ASCII and space, and obs-text (not DEL, not controls).
_EXTENSION = frozenset(b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))


class MalformedChunks(ValueError):
    """The chunked body breaks its framing; the message says how."""


class ChunkedFraming:
    """
    Follows one chunked body through its chunk-size lines, chunk data,
    the CRLF after each chunk and the trailer section.

    @ivar finished: whether the body is whole (its last chunk and trailer
        section read); what follows belongs to the next request and is not
        looked at.
    """

    def __init__(self) -> None:
        self._state = self._size_line
        self._buffer = b""
        self._remaining = 0
        self._trailers = 0
        self.finished = False

    def feed(self, data: bytes) -> None:
        """
        Follow C{data}, the next bytes of the connection.

        @raise MalformedChunks: when they break the framing.
        """
        if self.finished:
            return
        self._buffer += data
        while not self.finished and self._state():
            pass

    def _size_line(self) -> bool:
        """A chunk-size line: hexadecimal digits, maybe extensions after C{;}."""
        end = self._buffer.find(b"\r\n")
        if end >= MAX_SIZE_LINE or (end == -1 and len(self._buffer) > MAX_SIZE_LINE):
            raise MalformedChunks(f"a chunk-size line is over {MAX_SIZE_LINE} bytes")
        if end == -1:
            return False
        size, _, extensions = self._buffer[:end].partition(b";")
        if not size or not set(size) <= _HEX:
            raise MalformedChunks(f"the chunk size {size!r} is not hexadecimal")
        if not set(extensions) <= _EXTENSION:
            raise MalformedChunks("a chunk extension holds a control character")
        self._buffer = self._buffer[end + 2:]
        self._remaining = int(size, 16)
        self._state = self._data if self._remaining else self._trailer
        return True

    def _data(self) -> bool:
        """The chunk's data, then the CRLF after it."""
        taken = min(len(self._buffer), self._remaining)
        self._buffer = self._buffer[taken:]
        self._remaining -= taken
        if self._remaining:
            return False
        self._state = self._chunk_end
        return True

    def _chunk_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if not self._buffer.startswith(b"\r\n"):
            raise MalformedChunks("a chunk does not end with CRLF")
        self._buffer = self._buffer[2:]
        self._state = self._size_line
        return True

    def _trailer(self) -> bool:
        """Trailer field lines, up to the empty line that ends the body."""
        end = self._buffer.find(b"\r\n")
        if end == -1:
            pending = self._trailers + len(self._buffer) + (1 if self._buffer.endswith(b"\r") else 2)
            if pending > MAX_TRAILERS:
                raise MalformedChunks(f"the trailer section is over {MAX_TRAILERS} bytes")
            return False
        self._buffer = self._buffer[end + 2:]
        if end == 0:
            self.finished = True
            self._buffer = b""
            return False
        self._trailers += end + 2
        if self._trailers > MAX_TRAILERS:
            raise MalformedChunks(f"the trailer section is over {MAX_TRAILERS} bytes")
        return True
