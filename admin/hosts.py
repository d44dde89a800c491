"""
The names the API answers to, against DNS rebinding: a web page of
C{http://attacker.example:8888} whose name the attacker then points at
127.0.0.1 is, to the browser, the same origin as the API, so its requests
carry C{Host: attacker.example:8888} and a matching C{Origin}, and come
from this host.  The API answers only requests whose C{Host} names it:

 - an IP address (a page can reach it by address only from that address's
   own origin, which no other site has);
 - C{localhost} and names under C{.localhost} (RFC 6761: browsers resolve
   them to loopback themselves);
 - the host of C{[api] bind} when it is a name;
 - the names of C{[api] allowed_hosts}, or any name with C{"*"} there.

Others get 421 (Misdirected Request) naming the key, for every method,
before anything else is read.  A request without C{Host} (HTTP/1.0) is not
a browser's and is answered; one with two C{Host} headers gets 400.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from admin.errorbody import render_error
from admin.origins import parse_origin
from balancer.config.schema import ApiConfig

log = Logger()

#: The C{[api] allowed_hosts} entry that lets any name through.
ANY_HOST = "*"


def host_name(header: bytes) -> str | None:
    """The name or address a C{Host} header gives, in lower case without brackets or port; None if it gives none."""
    origin = parse_origin(f"http://{header.decode('latin-1')}")
    return origin[1].rstrip(".") if origin is not None else None


def is_address(name: str) -> bool:
    """Whether C{name} is an IPv4 or IPv6 address (an IPv6 zone included)."""
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    return True


class HostCheck(Resource):
    """Wraps the API: 421 to a request whose C{Host} does not name it; the rest rendered by the wrapped resource."""

    isLeaf = True

    def __init__(self, wrapped: IResource, api: ApiConfig) -> None:
        """
        @param wrapped: the API.
        @param api: C{[api]}: its C{bind} and C{allowed_hosts}.
        """
        super().__init__()
        self._wrapped = wrapped
        names = {name.lower().rstrip(".") for name in api.allowed_hosts}
        if api.bind.host and not is_address(api.bind.host):
            names.add(api.bind.host.lower().rstrip("."))
        self._any = ANY_HOST in names
        self._names = frozenset(names)

    def render(self, request: IRequest) -> Any:
        """A refusal for a request to another name; otherwise what the wrapped API answers."""
        headers = request.requestHeaders.getRawHeaders(b"Host", [])
        if len(headers) > 1:
            return render_error(request, 400, f"a request has one Host header, this one has {len(headers)}")
        if headers and not self._any and not self.answers_to(headers[0]):
            given = headers[0].decode("latin-1")
            log.info("api: refused {method} {path} for Host {host!r} (421)", method=request.method.decode("latin-1"),
                     path=request.path.decode("latin-1"), host=given)
            return render_error(request, 421, (
                f'this API does not answer to the name "{given}": it answers to IP addresses, localhost and the '
                "names in [api] allowed_hosts (a page whose name points at this host would otherwise reach it "
                "as its own origin)"))
        return getChildForRequest(self._wrapped, request).render(request)

    def answers_to(self, header: bytes) -> bool:
        """Whether the C{Host} header C{header} names this API."""
        name = host_name(header)
        if name is None:
            return False
        return is_address(name) or name == "localhost" or name.endswith(".localhost") or name in self._names
