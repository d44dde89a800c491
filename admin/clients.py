"""Who sent a request to the API: its client's host, and whether that is this host (a loopback address)."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from balancer.config.addresses import is_loopback


def client_host(request: IRequest) -> str:
    """The IP address of C{request}'s client, as text."""
    return str(getattr(request.getClientAddress(), "host", "an unknown address"))


def is_local_client(request: IRequest) -> bool:
    """Whether C{request}'s client is this host: 127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6."""
    return is_loopback(client_host(request))


class ByClient(Resource):
    """
    The API of an install without accounts: this host's clients (loopback)
    get C{local}, the admin's; every other client gets C{remote}, a basic
    account's (reads with secrets hidden, no C{/dump}; writes are refused
    before, see L{admin.writes}).
    """

    isLeaf = True

    def __init__(self, local: IResource, remote: IResource) -> None:
        super().__init__()
        self._local = local
        self._remote = remote

    def render(self, request: IRequest) -> Any:
        """What the resource for this client answers."""
        chosen = self._local if is_local_client(request) else self._remote
        return getChildForRequest(chosen, request).render(request)
