"""
C{kind = "consul"}: the instances of a service, from Consul's health API.

C{GET /v1/health/service/<consul_service_name>} on C{consul_host}, with
C{?passing=1} when C{consul_service_passing_only}, C{&tag=} for
C{consul_service_tag}, C{&dc=} for C{consul_datacenter}; the header
C{X-Consul-Token} carries C{consul_acl_token}, HTTP basic auth
C{consul_auth_username}/C{consul_auth_password}.  With
C{consul_tls_enabled} the API is spoken over HTTPS, checked against
C{consul_tls_cacert_path} (default: the system's roots), presenting
C{consul_tls_cert_path}/C{consul_tls_key_path} if given.

Each entry is a backend at C{Service.Address} (C{Node.Address} when that is
empty) and C{Service.Port}, weight 1, priority 1, sni from a service tag
C{sni=<name>}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from zope.interface import implementer

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend
from balancer.discovery.http_client import HTTPGetter, TLSFiles, decode_json, get_body, http_client, tls_policy


def consul_backend(entry: Any) -> BackendSpec:
    """
    The backend of one C{/v1/health/service} entry.

    @raise DiscoveryError: when the entry has no usable address or port.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("Service"), dict):
        raise DiscoveryError(f"expected an entry with a Service object, got {entry!r}")
    service = entry["Service"]
    node = entry.get("Node")
    if not isinstance(node, dict):
        node = {}
    sni = None
    for tag in service.get("Tags") or []:
        key, equals, value = str(tag).partition("=")
        if key == "sni" and equals:
            sni = value
    return make_backend(service.get("Address") or node.get("Address"), service.get("Port"), sni=sni)


@implementer(IDiscovery)
class ConsulDiscovery:
    """Asks a Consul agent for the instances of C{consul_service_name}."""

    DEFAULT_TIMEOUT = 2.0

    def __init__(self, config: DiscoveryConfig, reactor: Any, http: HTTPGetter | None = None) -> None:
        """@param http: the HTTP client; default: a new treq client (HTTPS per C{consul_tls_*}), made at each fetch."""
        self._config = config
        self._reactor = reactor
        self._http = http
        scheme = "https" if config.consul_tls_enabled else "http"
        self._url = f"{scheme}://{config.consul_host}/v1/health/service/{quote(config.consul_service_name, safe='')}"
        params = {}
        if config.consul_service_passing_only:
            params["passing"] = "1"
        if config.consul_service_tag:
            params["tag"] = config.consul_service_tag
        if config.consul_datacenter:
            params["dc"] = config.consul_datacenter
        self._kwargs: dict[str, Any] = {"params": params}
        if config.consul_acl_token:
            self._kwargs["headers"] = {"X-Consul-Token": config.consul_acl_token}
        if config.consul_auth_username:
            self._kwargs["auth"] = (config.consul_auth_username, config.consul_auth_password)

    def _client(self) -> HTTPGetter:
        if self._http is not None:
            return self._http
        tls = None
        if self._config.consul_tls_enabled:
            c = self._config
            files = TLSFiles(c.consul_tls_cacert_path, c.consul_tls_cert_path, c.consul_tls_key_path)
            tls = tls_policy(files, "consul_tls_")
        return http_client(self._reactor, tls=tls)

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """Ask for the service's instances."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        entries = decode_json(await get_body(self._client(), self._url, **self._kwargs), self._url)
        if not isinstance(entries, list):
            raise DiscoveryError(f"{self._url}: expected a JSON array of service entries")
        backends = []
        for index, entry in enumerate(entries):
            try:
                backends.append(consul_backend(entry))
            except DiscoveryError as e:
                raise DiscoveryError(f"entry {index}: {e}") from None
        return backends
