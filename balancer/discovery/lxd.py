"""
C{kind = "lxd"}: the running containers of an LXD server, from its REST API.

C{lxd_server_address} is the local socket (C{"unix:"}: LXD's default,
C{$LXD_SOCKET}, C{$LXD_DIR/unix.socket}, C{/var/lib/lxd/unix.socket} or the
snap's C{/var/snap/lxd/common/lxd/unix.socket}; C{"unix:PATH"} or
C{"unix://PATH"}: that socket) or C{"https://HOST:PORT"}.  Over HTTPS the
balancer presents its client certificate and checks the server as
L{balancer.discovery.lxd_tls} describes; when the server does not trust the
client yet, the balancer sends it C{lxd_server_remote_password} once
(C{POST /1.0/certificates}), as gobetween does.

Each fetch lists C{GET /1.0/containers?recursion=1} and keeps the containers
whose status is C{Running} and, with C{lxd_container_label_key}, whose
configuration has that key (with the value C{lxd_container_label_value},
when given).  A kept container is one backend (weight 1, priority 1):

  - port: the container's C{lxd_container_port_key} configuration value,
    else C{lxd_container_port};
  - host: from C{GET /1.0/containers/<name>/state}, the first address of the
    family C{lxd_container_address_type} (C{IPv4}: C{inet}; C{IPv6}:
    C{inet6}) on the interface named by the container's
    C{lxd_container_interface_key} value, else C{lxd_container_interface};
    link-local addresses are passed over;
  - sni: the container's C{lxd_container_sni_key} value, if any.

A container without a usable port or address, or whose state cannot be
read, is left out with a warning.  An error of the listing (or of reaching or
authenticating to the server) fails the fetch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from zope.interface import implementer

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend
from balancer.discovery.http_client import HTTPGetter, decode_json, http_client
from balancer.discovery.lxd_tls import (
    LxdFiles,
    LxdTLSPolicy,
    default_config_directory,
    fingerprint,
    generate_client_certificate,
    load_client_certificate,
    load_server_certificate,
    save_server_certificate,
)

_log = Logger()

_FAMILIES = {"IPv4": "inet", "IPv6": "inet6", "": "inet"}
_DEFAULT_SOCKETS = ("/var/lib/lxd/unix.socket", "/var/snap/lxd/common/lxd/unix.socket")
_SHOWN_BODY = 200


def unix_socket_path(address: str, environ: Mapping[str, str] = os.environ) -> str:
    """
    The socket path of a C{unix:} address: the path after C{unix:} (or
    C{unix://}), or when there is none LXD's default, as its client finds it.
    """
    path = address[len("unix:") :]
    if path.startswith("//"):
        path = path[2:]
    if path:
        return path
    if environ.get("LXD_SOCKET"):
        return environ["LXD_SOCKET"]
    if environ.get("LXD_DIR"):
        return os.path.join(environ["LXD_DIR"], "unix.socket")
    for candidate in _DEFAULT_SOCKETS:
        if os.path.exists(candidate):
            return candidate
    return _DEFAULT_SOCKETS[0]


async def lxd_request(http: Any, method: str, url: str, **kwargs: Any) -> Any:
    """
    One LXD API request; the C{metadata} of its synchronous answer.

    @param kwargs: passed to treq (C{params}, C{json}).
    @raise DiscoveryError: when the answer is not a JSON document, or is
        LXD's error document or an HTTP status other than 2xx (with LXD's
        error message).
    """
    path = url.split("://", 1)[-1].partition("/")[2]
    what = f"{method} /{path}"
    response = await (http.get(url, **kwargs) if method == "GET" else http.post(url, **kwargs))
    body: bytes = await response.content()
    document = None
    try:
        document = decode_json(body, what)
    except DiscoveryError:
        if 200 <= response.code < 300:
            raise
    if not 200 <= response.code < 300 or not isinstance(document, dict) or document.get("type") == "error":
        if isinstance(document, dict) and document.get("error"):
            said = str(document["error"])
        else:
            said = body[:_SHOWN_BODY].decode("utf-8", "replace").strip()
        raise DiscoveryError(f"{what}: LXD answered HTTP {response.code}" + (f": {said}" if said else ""))
    return document.get("metadata")


def _text_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def container_address(state: Any, interface: str, family: str) -> str:
    """
    The first address of C{family} (C{inet} or C{inet6}) on C{interface} in
    a C{/1.0/containers/<name>/state} document, link-local ones passed
    over; C{""} when there is none.
    """
    network = state.get("network") if isinstance(state, dict) else None
    device = network.get(interface) if isinstance(network, dict) else None
    addresses = device.get("addresses") if isinstance(device, dict) else None
    for address in addresses if isinstance(addresses, list) else []:
        if (
            isinstance(address, dict)
            and address.get("family") == family
            and address.get("scope") != "link"
            and address.get("address")
        ):
            return str(address["address"])
    return ""


@implementer(IDiscovery)
class LxdDiscovery:
    """
    Lists an LXD server's running containers and takes each one's address on the configured interface.

    @ivar files: where its certificates are (used over HTTPS only).
    """

    DEFAULT_TIMEOUT = 5.0

    def __init__(self, config: DiscoveryConfig, reactor: Any, http: HTTPGetter | None = None) -> None:
        """
        @param http: the HTTP client for a C{unix:} address; default: a
            treq client on the socket, made at each fetch.
        """
        self._config = config
        self._reactor = reactor
        self._http = http
        address = config.lxd_server_address
        self._https = address.startswith("https:")
        if self._https:
            self._socket = ""
            self._base = address.rstrip("/")
        else:
            self._socket = unix_socket_path(address)
            self._base = "http://lxd"
        directory = os.path.expanduser(config.lxd_config_directory) or default_config_directory()
        self.files = LxdFiles(directory, config.lxd_server_remote_name or "local")
        self._family = _FAMILIES[config.lxd_container_address_type]

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """Connect (and authenticate, over HTTPS), list the containers and read each kept one's state."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        if self._http is not None:
            http: Any = self._http
        elif self._https:
            http = await self._https_client()
        else:
            http = http_client(self._reactor, unix_socket=self._socket)
        containers = await lxd_request(http, "GET", self._base + "/1.0/containers", params={"recursion": "1"})
        if not isinstance(containers, list):
            raise DiscoveryError("GET /1.0/containers?recursion=1: expected a list of containers")
        backends: dict[str, BackendSpec] = {}
        for container in containers:
            backend = await self._backend(http, container)
            if backend is not None:
                backends.setdefault(backend.key, backend)
        return list(backends.values())

    async def _backend(self, http: Any, container: Any) -> BackendSpec | None:
        """The backend of one C{/1.0/containers} entry, or C{None} when it is not kept."""
        c = self._config
        if not isinstance(container, dict) or container.get("status") != "Running":
            return None
        name = str(container.get("name", ""))
        settings = _text_map(container.get("config"))
        if c.lxd_container_label_key:
            value = settings.get(c.lxd_container_label_key)
            if value is None or (c.lxd_container_label_value and value != c.lxd_container_label_value):
                return None
        port = settings.get(c.lxd_container_port_key, "") if c.lxd_container_port_key else ""
        port = port or (str(c.lxd_container_port) if c.lxd_container_port else "")
        if not port:
            _log.warn(
                "lxd container {name} skipped: no {key} in its configuration and lxd_container_port is 0",
                name=name,
                key=c.lxd_container_port_key,
            )
            return None
        interface = settings.get(c.lxd_container_interface_key, "") if c.lxd_container_interface_key else ""
        interface = interface or c.lxd_container_interface or "eth0"
        try:
            state = await lxd_request(http, "GET", f"{self._base}/1.0/containers/{quote(name, safe='')}/state")
        except DiscoveryError as e:
            _log.warn("lxd container {name} skipped: {error}", name=name, error=str(e))
            return None
        host = container_address(state, interface, self._family)
        if not host:
            _log.warn(
                "lxd container {name} skipped: no {family} address on {interface}",
                name=name,
                family=c.lxd_container_address_type or "IPv4",
                interface=interface,
            )
            return None
        sni = settings.get(c.lxd_container_sni_key) if c.lxd_container_sni_key else None
        try:
            return make_backend(host, port, sni=sni)
        except DiscoveryError as e:
            _log.warn("lxd container {name} skipped: {error}", name=name, error=str(e))
            return None

    async def _https_client(self) -> HTTPClient:
        """
        A client the server trusts: with the client certificate (made if
        asked), checking the server by its saved certificate or the system's
        roots (saving the certificate it presents if asked), authenticated
        with the password if the server does not trust the client yet.
        """
        c, files = self._config, self.files
        if c.lxd_generate_client_certs and generate_client_certificate(files):
            _log.info("lxd: made the client certificate {path}", path=files.client_cert)
        client = load_client_certificate(files)
        if client is None:
            raise DiscoveryError(
                f"no LXD client certificate in {files.client_cert}: set lxd_generate_client_certs = true,"
                " or put client.crt and client.key in lxd_config_directory"
            )
        pinned = load_server_certificate(files)
        if pinned is None:
            policy = LxdTLSPolicy(client)
            http = http_client(self._reactor, tls=policy)
            try:
                await lxd_request(http, "GET", self._base + "/1.0")
            except (CancelledError, ConnectError, DiscoveryError):
                raise  # cancelled, nothing listening, or the handshake passed and the server answered
            except Exception as e:
                if not c.lxd_accept_server_cert:
                    raise DiscoveryError(
                        f"cannot use the LXD server at {self._base} with the system's trusted roots ({_said(e)}):"
                        f" set lxd_accept_server_cert = true, or save its certificate as {files.server_cert}"
                    ) from None
            else:
                await self._trust(http)
                return http
            pinned = await self._accept_certificate(client)
        policy = LxdTLSPolicy(client, pinned=pinned)
        http = http_client(self._reactor, tls=policy)
        try:
            await self._trust(http)
        except CancelledError:
            raise
        except Exception:
            if policy.mismatch:
                raise DiscoveryError(
                    f"the LXD server at {self._base} presented another certificate than the one saved in"
                    f" {files.server_cert} (remove that file to accept the new one with lxd_accept_server_cert = true)"
                ) from None
            raise
        return http

    async def _accept_certificate(self, client: Any) -> bytes:
        """Fetch the certificate the server presents, save it, and return it (DER)."""
        policy = LxdTLSPolicy(client, accept_any=True)
        try:
            await lxd_request(http_client(self._reactor, tls=policy), "GET", self._base + "/1.0")
        except CancelledError:
            raise
        except Exception as e:
            if policy.seen is None:
                raise DiscoveryError(
                    f"cannot get the certificate of the LXD server at {self._base}: {_said(e)}"
                ) from None
        assert policy.seen is not None
        save_server_certificate(self.files, policy.seen)
        _log.info(
            "lxd: accepted the certificate of {url} (SHA-256 {fingerprint}), saved in {path}",
            url=self._base,
            fingerprint=fingerprint(policy.seen),
            path=self.files.server_cert,
        )
        return policy.seen

    async def _trust(self, http: HTTPClient) -> None:
        """Make sure the server trusts the client: send the password once if it does not."""
        if _trusted(await lxd_request(http, "GET", self._base + "/1.0")):
            return
        files, password = self.files, self._config.lxd_server_remote_password
        if not password:
            raise DiscoveryError(
                f"the LXD server at {self._base} does not trust the client certificate {files.client_cert}:"
                " set lxd_server_remote_password to its trust password, or add the certificate there"
                " with 'lxc config trust add'"
            )
        try:
            request = {"type": "client", "password": password}
            await lxd_request(http, "POST", self._base + "/1.0/certificates", json=request)
        except DiscoveryError as e:
            raise DiscoveryError(f"authenticating with lxd_server_remote_password failed: {e}") from None
        if not _trusted(await lxd_request(http, "GET", self._base + "/1.0")):
            raise DiscoveryError(
                f"the LXD server at {self._base} accepted the password but still does not trust the client"
            )
        _log.info("lxd: {url} now trusts the client certificate {path}", url=self._base, path=files.client_cert)


def _trusted(server: Any) -> bool:
    return isinstance(server, dict) and server.get("auth") == "trusted"


def _said(error: Exception) -> str:
    """An error's message, or its type when it has none (Twisted's connection failures)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(str(r.value) or type(r.value).__name__ for r in reasons)
    return str(error) or type(error).__name__
