"""
Requests whose method, host or path Klein cannot read (bytes that are not
UTF-8, such as C{Host: \\xc8} or C{/%FF}) are answered here with 400 and the
API's JSON error, before Klein sees them: Klein would log each with a
traceback and answer a plain-text 400.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from admin.errorbody import render_error


class Utf8Resource(Resource):
    """Wraps the API: a request with a method, host or path that is not UTF-8 gets 400 with a JSON body."""

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()
        self._wrapped = wrapped

    def render(self, request: IRequest) -> bytes:
        """Refuse an unreadable request; render any other with the wrapped resource."""
        try:
            request.method.decode("ascii")
            request.getRequestHostname().decode("utf-8")
            b"/".join(request.prepath + request.postpath).decode("utf-8")
        except UnicodeDecodeError as e:
            detail = f"the request's method, host or path is not UTF-8 (byte {e.object[e.start:e.start + 1]!r})"
            return render_error(request, 400, detail)
        return getChildForRequest(self._wrapped, request).render(request)
