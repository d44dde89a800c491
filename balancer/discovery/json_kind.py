"""
C{kind = "json"}: GET a JSON array; each element is a backend.

C{json_host_pattern}, C{json_port_pattern}, C{json_weight_pattern},
C{json_priority_pattern} and C{json_sni_pattern} are dotted paths into each
element (C{"addr.ip"}; a number steps into a list: C{"addrs.0"}; a leading
C{.} is allowed).  Host and port are required (the port may be a number or a
string of digits); weight and priority default to 1, sni to none when their
path is absent or null.  A document that is not a JSON array, an element
without a host or port, or a value of the wrong type fails the fetch.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend
from balancer.discovery.http_client import HTTPGetter, decode_json, get_body, http_client


def lookup(document: Any, path: str) -> Any:
    """
    The value at the dotted C{path} in C{document}, or C{None} when absent.

    Each part names an object member, or indexes a list when it is a number.
    """
    value = document
    for part in path.lstrip(".").split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def parse_json(body: bytes, config: DiscoveryConfig) -> list[BackendSpec]:
    """
    The backends in the JSON array C{body}, found with the config's paths.

    @raise DiscoveryError: naming the element and the value that is wrong.
    """
    document = decode_json(body, "the document")
    if not isinstance(document, list):
        raise DiscoveryError(f"expected a JSON array of backends, got a JSON {type(document).__name__}")
    paths = {
        "host": config.json_host_pattern,
        "port": config.json_port_pattern,
        "weight": config.json_weight_pattern,
        "priority": config.json_priority_pattern,
        "sni": config.json_sni_pattern,
    }
    backends = []
    for index, element in enumerate(document):
        try:
            backends.append(make_backend(**{name: lookup(element, path) for name, path in paths.items()}))
        except DiscoveryError as e:
            raise DiscoveryError(f"element {index}: {e} (json_*_pattern paths: {paths})") from None
    return backends


@implementer(IDiscovery)
class JsonDiscovery:
    """GETs C{json_endpoint} and reads each element with the C{json_*_pattern} paths."""

    DEFAULT_TIMEOUT = 5.0

    def __init__(self, config: DiscoveryConfig, reactor: Any, http: HTTPGetter | None = None) -> None:
        """@param http: the HTTP client; default: a new treq client on C{reactor}."""
        self._config = config
        self._http = http if http is not None else http_client(reactor)

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """GET the document and parse it."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        return parse_json(await get_body(self._http, self._config.json_endpoint), self._config)
