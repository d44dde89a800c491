"""
C{kind = "docker"}: the published ports of labelled containers, from the
Docker Engine API.

C{GET /containers/json} (running containers), filtered by
C{docker_container_label} (C{"key=value"} or C{"key"}), on
C{docker_endpoint}: C{unix:///var/run/docker.sock}, C{tcp://host:port} or
C{http(s)://host:port}.  With C{docker_tls_enabled} (or C{https://}) the API
is spoken over HTTPS, checked against C{docker_tls_cacert_path} (default: the
system's roots), presenting C{docker_tls_cert_path}/C{docker_tls_key_path}
if given.

Each port binding whose C{PrivatePort} is C{docker_container_private_port}
and that is published is a backend (weight 1, priority 1, sni from the
container's label C{sni}) at C{PublicPort} on, as in gobetween, the first of:
the container's environment variable C{docker_container_host_env_var} (read
with C{GET /containers/<id>/json}); the binding's C{IP} unless it is every
interface (C{0.0.0.0}, C{::}); the host of C{docker_endpoint} (127.0.0.1
for a unix socket).  Bindings that give the same C{host:port} (IPv4 and IPv6)
make one backend.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet.defer import Deferred
from zope.interface import implementer

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend
from balancer.discovery.http_client import HTTPGetter, TLSFiles, decode_json, get_body, http_client, tls_policy

_EVERY_INTERFACE = ("", "0.0.0.0", "::")


@implementer(IDiscovery)
class DockerDiscovery:
    """Lists containers through the Docker Engine API and takes their published ports."""

    DEFAULT_TIMEOUT = 5.0

    def __init__(self, config: DiscoveryConfig, reactor: Any, http: HTTPGetter | None = None) -> None:
        """@param http: the HTTP client; default: a new treq client for C{docker_endpoint}, made at each fetch."""
        self._config = config
        self._reactor = reactor
        self._http = http
        scheme, _, rest = config.docker_endpoint.partition("://")
        if scheme == "unix":
            self._socket = rest
            self._base = "http://docker"
            self._docker_host = "127.0.0.1"
        else:
            self._socket = ""
            secure = scheme == "https" or config.docker_tls_enabled
            self._base = ("https://" if secure else "http://") + rest.rstrip("/")
            self._docker_host = urlsplit(self._base).hostname or ""

    def _client(self) -> HTTPGetter:
        if self._http is not None:
            return self._http
        tls = None
        if self._base.startswith("https://"):
            c = self._config
            files = TLSFiles(c.docker_tls_cacert_path, c.docker_tls_cert_path, c.docker_tls_key_path)
            tls = tls_policy(files, "docker_tls_")
        return http_client(self._reactor, tls=tls, unix_socket=self._socket)

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """List the containers (and inspect them for the host variable, if configured)."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        http = self._client()
        params = {}
        if self._config.docker_container_label:
            params["filters"] = json.dumps({"label": [self._config.docker_container_label]})
        url = self._base + "/containers/json"
        containers = decode_json(await get_body(http, url, params=params), url)
        if not isinstance(containers, list):
            raise DiscoveryError(f"{url}: expected a JSON array of containers")
        backends: dict[str, BackendSpec] = {}
        for container in containers:
            bindings = _bindings(container, self._config.docker_container_private_port)
            if not bindings:
                continue
            variable_host = await self._host_variable(http, container)
            labels = container.get("Labels")
            sni = labels.get("sni") if isinstance(labels, dict) else None
            for binding in bindings:
                try:
                    backend = make_backend(variable_host or self._binding_host(binding), binding["PublicPort"], sni=sni)
                except DiscoveryError as e:
                    raise DiscoveryError(f"container {str(container.get('Id'))[:12]}: {e}") from None
                backends.setdefault(backend.key, backend)
        return list(backends.values())

    def _binding_host(self, binding: dict[str, Any]) -> str:
        ip = binding.get("IP") or ""
        return self._docker_host if ip in _EVERY_INTERFACE else ip

    async def _host_variable(self, http: HTTPGetter, container: dict[str, Any]) -> str:
        """The value of C{docker_container_host_env_var} in the container, or C{""}."""
        name = self._config.docker_container_host_env_var
        if not name:
            return ""
        url = f"{self._base}/containers/{quote(str(container.get('Id', '')), safe='')}/json"
        details = decode_json(await get_body(http, url), url)
        for entry in ((details.get("Config") or {}).get("Env") or []) if isinstance(details, dict) else []:
            key, _, value = str(entry).partition("=")
            if key == name:
                return value
        return ""


def _bindings(container: Any, private_port: int) -> list[dict[str, Any]]:
    """The published bindings of C{private_port} in one C{/containers/json} entry."""
    if not isinstance(container, dict):
        raise DiscoveryError(f"expected a container object, got {container!r}")
    return [
        port
        for port in container.get("Ports") or []
        if isinstance(port, dict) and port.get("PrivatePort") == private_port and port.get("PublicPort")
    ]
