"""
Web origins (RFC 6454): scheme, host and port, compared the way browsers
compare them.  The API's own origin is the scheme and C{Host} of the request
itself; an C{Origin} header names the page that sent the request.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from twisted.web.iweb import IRequest

#: An origin: (scheme, host in lower case, port).
Origin = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> Origin | None:
    """
    The origin C{scheme://host[:port]} names, with the scheme's default port
    when none is given; None for anything else (C{null}, a path, a user, a bad port).
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def own_origin(request: IRequest) -> Origin | None:
    """The API's origin as this request reached it: its scheme and C{Host} (None without a usable C{Host})."""
    host = request.getHeader(b"Host")
    if not host:
        return None
    scheme = "https" if request.isSecure() else "http"
    return parse_origin(f"{scheme}://{host.decode('latin-1')}")


def sent_origins(request: IRequest) -> list[str]:
    """The C{Origin} headers of C{request}, as text (usually none or one)."""
    return [value.decode("latin-1") for value in request.requestHeaders.getRawHeaders(b"Origin", [])]


def origin_set(texts: Iterable[str]) -> frozenset[Origin]:
    """The origins C{texts} name (C{[api] cors_origins}, already validated)."""
    return frozenset(o for o in map(parse_origin, texts) if o is not None)
