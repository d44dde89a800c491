"""
Cross-origin requests (C{[api] cors = true}): every answer allows any origin,
and browsers' preflight requests are answered before the guard, since a
browser sends them without credentials.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

#: The methods a preflight answer allows.
ALLOWED_METHODS = b"GET, POST, DELETE, OPTIONS"

#: How long a browser may cache a preflight answer, in seconds.
MAX_AGE = b"600"


class CorsResource(Resource):
    """Wraps the API: C{Access-Control-Allow-Origin: *} on every answer, preflights answered here."""

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self._wrapped = wrapped

    def render(self, request: IRequest) -> bytes | int:
        """Answer a preflight with 204; render anything else with the wrapped resource."""
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        wanted = request.getHeader(b"Access-Control-Request-Method")
        if request.method == b"OPTIONS" and wanted is not None:
            request.setResponseCode(204)
            request.setHeader(b"Access-Control-Allow-Methods", ALLOWED_METHODS)
            headers = request.getHeader(b"Access-Control-Request-Headers")
            if headers:
                request.setHeader(b"Access-Control-Allow-Headers", headers)
            request.setHeader(b"Access-Control-Max-Age", MAX_AGE)
            return b""
        return getChildForRequest(self._wrapped, request).render(request)
