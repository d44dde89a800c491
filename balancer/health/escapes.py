"""Decoding of the escapes that C{probe_send} and C{probe_recv} may contain."""

from __future__ import annotations

import re

_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|[nrt\\])")
_SIMPLE = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"\\": b"\\"}


def decode_escapes(text: str) -> bytes:
    """
    The bytes C{text} stands for: UTF-8, with C{\\n}, C{\\r}, C{\\t}, C{\\\\}
    and C{\\xNN} (two hex digits, one byte) decoded.

    Any other backslash, and a C{\\x} without two hex digits, is kept as it is.
    """

    def replace(match: re.Match[bytes]) -> bytes:
        escape = match.group(1)
        if escape.startswith(b"x"):
            return bytes([int(escape[1:], 16)])
        return _SIMPLE[escape]

    return _ESCAPE.sub(replace, text.encode("utf-8"))
