"""
The C{[acme] http_bind} listener: answers HTTP-01 validation requests
(C{GET /.well-known/acme-challenge/TOKEN}) with the key authorization of a
token being validated, and 404 to anything else.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import CannotListenError
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import Data

from balancer.acme.certificates import AcmeCertificates
from balancer.config.addresses import HostPort
from balancer.listening import BindError, ListeningService


class ChallengeAnswers(Resource):
    """C{/.well-known/acme-challenge/TOKEN}: the token's key authorization, as text."""

    def __init__(self, certificates: AcmeCertificates) -> None:
        super().__init__()
        self._certificates = certificates

    def getChild(self, path: bytes, request: Request) -> IResource:
        """The answer for token C{path}, or 404."""
        answer = self._certificates.http_answer(path.decode("ascii", "replace"))
        if answer is None or request.postpath:
            return NoResource()
        return Data(answer.encode("ascii"), "text/plain")


def challenge_site(certificates: AcmeCertificates) -> Site:
    """The site served on C{http_bind}."""
    root = Resource()
    well_known = Resource()
    root.putChild(b".well-known", well_known)
    well_known.putChild(b"acme-challenge", ChallengeAnswers(certificates))
    return Site(root)


class Http01Service(ListeningService):
    """Listens on C{[acme] http_bind} while it runs (worker 0 only)."""

    label = "acme"

    def __init__(self, bind: HostPort, certificates: AcmeCertificates, reactor: Any) -> None:
        super().__init__()
        self._address = bind
        self._site = challenge_site(certificates)
        self._reactor = reactor

    def bind(self) -> Any:
        """Listen on C{http_bind}; a failure names the key and the address."""
        try:
            return self._reactor.listenTCP(self._address.port, self._site, interface=self._address.listen_host)
        except CannotListenError as e:
            raise BindError(f"acme.http_bind: cannot listen on {self._address}: {e.socketError}") from e
