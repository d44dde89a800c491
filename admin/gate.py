"""
The resource in front of the API that asks for HTTP Basic credentials and
logs them in through a C{twisted.cred} portal.

Twisted's C{HTTPAuthSessionWrapper} does the same, but offers no public hook
to answer its refusals as JSON, to know the client's address in the checker,
to answer 429 and 503, or to drop a login when its client goes away; this is
a small resource built on public APIs only (L{Portal.login},
L{BasicCredentialFactory.decode}, L{IRequest.notifyFinish}).

What the portal's login ends in:

  - an avatar: the request is rendered by it (the rest of its path included);
  - C{UnauthorizedLogin} (or no usable credentials): 401 with
    C{WWW-Authenticate: Basic realm="..."};
  - L{TooManyFailures}: 429 with C{Retry-After};
  - L{Busy}: 503 with C{Retry-After};
  - the client left while it waited: the login is cancelled (a queued check
    never runs) and nothing is answered.

Every refusal has a JSON body: a JSON string, or under C{/v1} a JSON:API
error document.
"""

from __future__ import annotations

import hmac
from typing import Any

import attrs
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, Unauthorized
from twisted.cred.portal import Portal
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import BasicCredentialFactory
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from admin.checks import Busy
from admin.errorbody import render_error
from admin.ratelimit import TooManyFailures, client_key

log = Logger()

UNAUTHORIZED = "credentials missing or not valid: use HTTP Basic authentication"


@implementer(IUsernamePassword)
@attrs.frozen(repr=False)
class ClientPassword:
    """HTTP Basic credentials, and the address (see L{client_key}) of the client that sent them."""

    username: bytes
    password: bytes
    client: str

    def checkPassword(self, password: bytes) -> bool:
        """Whether C{password} is the one sent, compared in constant time."""
        return hmac.compare_digest(password, self.password)

    def __repr__(self) -> str:
        return f"ClientPassword(username={self.username!r}, client={self.client!r})"


class Refusal(Resource):
    """An error answer with the API's error body (L{admin.errorbody})."""

    isLeaf = True

    def __init__(self, code: int, detail: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    def render(self, request: IRequest) -> bytes:
        """Set the code and headers; the body is the error C{detail} (none for C{HEAD})."""
        for name, value in self.headers.items():
            request.setHeader(name, value)
        body = render_error(request, self.code, self.detail)
        return b"" if request.method == b"HEAD" else body


class Gate(Resource):
    """Logs each request in through C{portal}, then lets its avatar (an L{IResource}) render it."""

    isLeaf = True

    def __init__(self, portal: Portal, realm: bytes) -> None:
        """
        @param portal: hands out L{IResource} avatars for L{ClientPassword} credentials.
        @param realm: named in the C{WWW-Authenticate} challenge.
        """
        super().__init__()
        self._portal = portal
        self._realm = realm
        self._basic = BasicCredentialFactory(realm)

    def render(self, request: IRequest) -> bytes | int:
        """Answer 401 without usable credentials; otherwise log in and render (see the module)."""
        # Served by a Site: the answer comes later, through Request.render and notifyFinish.
        assert isinstance(request, Request), "the gate renders twisted.web.server.Request objects"
        credentials = self._credentials(request)
        if credentials is None:
            return self._unauthorized().render(request)
        gone = []
        login = self._portal.login(credentials, None, IResource)

        def left(reason: Failure) -> None:
            gone.append(reason)
            login.cancel()

        request.notifyFinish().addErrback(left)

        def answer(result: Any) -> None:
            if gone:
                return
            if isinstance(result, Failure):
                request.render(self._refusal(result, request))
                return
            _, avatar, logout = result
            request.notifyFinish().addBoth(lambda _: logout())
            request.render(getChildForRequest(avatar, request))

        def failed(reason: Failure) -> None:
            log.failure("api: answering {path!r} failed", reason, path=request.path)

        login.addBoth(answer).addErrback(failed)
        return NOT_DONE_YET

    def _credentials(self, request: IRequest) -> ClientPassword | None:
        """The request's Basic credentials, or None when there are none or they cannot be read."""
        header = request.getHeader(b"Authorization")
        if header is None:
            return None
        scheme, _, response = header.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = self._basic.decode(response.strip(), request)
        except LoginFailed:
            return None
        return ClientPassword(decoded.username, decoded.password, client_key(_host(request)))

    def _unauthorized(self) -> Refusal:
        return Refusal(401, UNAUTHORIZED, {b"WWW-Authenticate": b'Basic realm="%s"' % self._realm})

    def _refusal(self, failure: Failure, request: IRequest) -> Resource:
        """The answer to a login that did not give an avatar."""
        error = failure.value
        if isinstance(error, (Unauthorized, LoginFailed)):
            return self._unauthorized()
        if isinstance(error, TooManyFailures):
            detail = f"too many failed logins from this address: retry after {error.retry_after}s"
            return Refusal(429, detail, {b"Retry-After": b"%d" % error.retry_after})
        if isinstance(error, Busy):
            detail = f"too many logins are being checked: retry after {error.retry_after}s"
            return Refusal(503, detail, {b"Retry-After": b"%d" % error.retry_after})
        log.failure("api: login for {path!r} failed", failure, path=request.path)
        return Refusal(500, "internal error")


def _host(request: IRequest) -> str:
    """The client's IP address, or C{""} when it has none (a UNIX socket)."""
    return str(getattr(request.getClientAddress(), "host", ""))
