"""
Cross-origin requests.  Browsers' preflight requests are answered here,
before the guard, since a browser sends them without credentials.

 - C{[api] cors = true} (gobetween's key) lets pages of any origin read:
   answers carry C{Access-Control-Allow-Origin: *}, and a preflight allows
   only reads (writes from another origin are refused anyway, see
   L{admin.writes}), and never the C{Authorization} header: a page of any
   site could otherwise try passwords and read what the right one shows.
 - C{[api] cors_origins} lists the origins whose pages may also write: to a
   request from one of them the answer names that origin, allows
   credentials, and a preflight allows every method of the API.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from admin.origins import Origin, parse_origin

#: The methods a preflight allows to any origin (C{cors = true}).
READ_METHODS = b"GET, HEAD, OPTIONS"

#: The methods a preflight allows to an origin of C{cors_origins}.
ALL_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

#: How long a browser may cache a preflight answer, in seconds.
MAX_AGE = b"600"


def without_authorization(headers: bytes) -> bytes:
    """The comma-separated header names C{headers} without C{Authorization} (in any case)."""
    names = [name.strip() for name in headers.split(b",")]
    return b", ".join(name for name in names if name and name.lower() != b"authorization")


class CorsResource(Resource):
    """Wraps the API: CORS headers on its answers, preflights answered here."""

    isLeaf = True

    def __init__(self, wrapped: IResource, any_origin: bool, trusted: frozenset[Origin] = frozenset()) -> None:
        """
        @param any_origin: let pages of any origin read (C{[api] cors}).
        @param trusted: the origins whose pages may also write (C{[api] cors_origins}).
        """
        super().__init__()
        self._wrapped = wrapped
        self._any_origin = any_origin
        self._trusted = trusted

    def render(self, request: IRequest) -> Any:
        """Answer a preflight with 204; render anything else with the wrapped resource."""
        origin = request.getHeader(b"Origin")
        if origin is not None and parse_origin(origin.decode("latin-1")) in self._trusted:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Credentials", b"true")
            methods = ALL_METHODS
        elif self._any_origin:
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            methods = READ_METHODS
        else:
            methods = b""
        if self._trusted:
            request.setHeader(b"Vary", b"Origin")
        wanted = request.getHeader(b"Access-Control-Request-Method")
        if methods and request.method == b"OPTIONS" and wanted is not None:
            request.setResponseCode(204)
            request.setHeader(b"Access-Control-Allow-Methods", methods)
            headers = request.getHeader(b"Access-Control-Request-Headers")
            if headers and methods is READ_METHODS:
                headers = without_authorization(headers)
            if headers:
                request.setHeader(b"Access-Control-Allow-Headers", headers)
            request.setHeader(b"Access-Control-Max-Age", MAX_AGE)
            return b""
        return getChildForRequest(self._wrapped, request).render(request)
