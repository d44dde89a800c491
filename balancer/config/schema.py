"""
The configuration schema: gobetween 0.8's TOML format as frozen attrs classes.

Every attribute is one TOML key of the same name (see L{balancer.config.fields}).
Durations are held in seconds; 0 means "no timeout".  Instances are immutable:
a change (from the API or a reload) builds new ones.
"""

from __future__ import annotations

import re
import socket
from typing import Iterator

import attrs

from balancer.config.addresses import HOST_NAME, BackendSpec, HostPort, backend_line, listen_address
from balancer.config.fields import (
    choice,
    duration,
    flag,
    items,
    MAX_CONNECTIONS,
    MAX_COUNT,
    NAME_PATTERN,
    named_sections,
    regexp,
    section,
    setting,
    text,
    texts,
    whole,
)
from balancer.config.overrides import OverrideConfig, backend_tables

STRATEGIES = ("weight", "roundrobin", "leastconn", "leastbandwidth", "iphash", "iphash1")
PROTOCOLS = ("tcp", "tls", "udp")
DISCOVERY_KINDS = ("static", "exec", "plaintext", "json", "srv", "docker", "consul", "lxd")
HEALTHCHECK_KINDS = ("ping", "probe", "exec", "none")
TLS_VERSIONS = ("", "ssl3", "tls1", "tls1.0", "tls1.1", "tls1.2", "tls1.3")

Found = Iterator[tuple[str, str]]
# The rest of a URL after "scheme://", without credentials ("user:password@"): they would
# be shown to read-only accounts, and the HTTP clients take none from a URL.
_NO_CREDENTIALS = r"[^\s/?#@]+([/?#]\S*)?"
_HTTP_URL = rf"https?://{_NO_CREDENTIALS}"
#: gobetween's lxd_server_address: the local socket ("unix:" for LXD's default, "unix:PATH", "unix://PATH")
#: or an HTTPS origin.
_LXD_ADDRESS = r"unix:[^\s\x00]*|https://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?/?"
#: A remote's name, also the file name of its saved certificate: no path separator, not "." or "..".
_LXD_REMOTE = r"(?!\.\.?$)[^/\\:\s\x00]*"
#: An LXD configuration key ("user.gobetween.port"), or "" for none.
_LXD_KEY = r"[^\s\x00]*"
_LXD_INTERFACE = r"[^\s/\x00]*"
#: A name the admin API answers to besides its addresses (C{[api] allowed_hosts}), or "*" for any.
_HOST_NAME = rf"\*|{HOST_NAME}"
#: A web origin: scheme, host (a name, an IPv4 address or a bracketed IPv6 address) and optional port.
_ORIGIN = r"https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?"


@attrs.frozen
class LoggingConfig:
    """C{[logging]}: where and how the balancer logs."""

    level: str = setting("info", parse=choice("debug", "info", "warn", "warning", "error"))
    output: str = setting("stdout", parse=text(r".+", "stdout, stderr or a file path"))
    format: str = setting("text", parse=choice("text", "json"))
    access_log: bool = setting(True, parse=flag(), doc="one info line per finished connection")
    access_output: str = setting("", parse=text(r"[^\n]*", "empty, stdout, stderr or a file path"))


@attrs.frozen
class BasicAuthConfig:
    """C{[api.basic_auth]}: gobetween's single admin account."""

    login: str = setting(parse=text(r"[^:\s]+", "a login without ':' or spaces"))
    password: str = setting(parse=text())


@attrs.frozen
class ApiTlsConfig:
    """C{[api.tls]}: serve the API over HTTPS."""

    cert_path: str = setting(parse=text(r".+", "a file path"))
    key_path: str = setting(parse=text(r".+", "a file path"))


@attrs.frozen
class ApiUserConfig:
    """One C{[[api.users]]} account (our extension)."""

    login: str = setting(parse=text(r"[^:\s]+", "a login without ':' or spaces"))
    password_hash: str | None = setting(None, parse=text(r"\$2[aby]\$\d\d\$.{53}", "a bcrypt hash ($2b$...)"))
    password: str | None = setting(None, parse=text())
    account: str = setting("admin", parse=choice("admin", "basic"))

    def problems(self) -> Found:
        """Exactly one of password and password_hash."""
        if (self.password is None) == (self.password_hash is None):
            yield "", "set exactly one of password_hash or password"


@attrs.frozen
class ApiConfig:
    """C{[api]}: the admin REST API."""

    enabled: bool = setting(False, parse=flag())
    bind: HostPort = setting(HostPort("", 8888), parse=listen_address())
    cors: bool = setting(False, parse=flag())
    basic_auth: BasicAuthConfig | None = setting(None, parse=section(BasicAuthConfig))
    tls: ApiTlsConfig | None = setting(None, parse=section(ApiTlsConfig))
    users: tuple[ApiUserConfig, ...] = setting((), parse=items(section(ApiUserConfig)))
    require_conditional: bool = setting(False, parse=flag())
    cors_origins: tuple[str, ...] = setting((), parse=items(text(_ORIGIN, 'an origin like "https://ui.example:8443"')))
    allowed_hosts: tuple[str, ...] = setting(
        (), parse=items(text(_HOST_NAME, 'a host name like "lb1.example.com", or "*"'))
    )
    allow_exec: bool = setting(False, parse=flag())
    auth_concurrency: int = setting(2, parse=whole(1, 8))
    auth_failures_per_second: int = setting(5, parse=whole(1, 10_000))
    header_timeout: float = setting(10.0, parse=duration())
    max_connections: int = setting(256, parse=whole(1, 1_000_000))

    def problems(self) -> Found:
        """Logins are unique across basic_auth and users; an origin's port is 1 to 65535; the request head has a deadline."""
        if self.header_timeout <= 0:
            yield "header_timeout", 'expected a duration over 0 (the request head always has a deadline), got 0'
        logins = [u.login for u in self.users]
        if self.basic_auth is not None:
            logins.append(self.basic_auth.login)
        for login in sorted({x for x in logins if logins.count(x) > 1}):
            yield "users", f'login "{login}" is defined more than once'
        for i, origin in enumerate(self.cors_origins):
            port = re.search(r":(\d+)$", origin)
            if port is not None and not 0 < int(port.group(1)) <= 65535:
                yield f"cors_origins[{i}]", f'expected a port from 1 to 65535, got "{origin}"'


@attrs.frozen
class MetricsConfig:
    """C{[metrics]}: Prometheus text format at /metrics."""

    enabled: bool = setting(False, parse=flag())
    bind: HostPort = setting(HostPort("", 9284), parse=listen_address())


@attrs.frozen
class ProfilerConfig:
    """C{[profiler]}: accepted for compatibility with gobetween's sample; Go's pprof has no equivalent here."""

    enabled: bool = setting(False, parse=flag())
    bind: HostPort = setting(HostPort("localhost", 6060), parse=listen_address())


#: Let's Encrypt's production ACME directory, the default C{[acme] directory_url}.
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


@attrs.frozen
class AcmeConfig:
    """
    C{[acme]}: certificates from an ACME CA for the C{acme_hosts} of
    C{[servers.X.tls]} (L{balancer.acme}).

    C{challenge}: C{"http"} answers HTTP-01 on C{http_bind}; C{"sni"} (or
    C{"tls"}) answers TLS-ALPN-01 on the server's own listener; C{"dns"} is
    accepted, but a server with C{acme_hosts} then cannot start.
    C{directory_url} and C{directory_ca_cert_path} are ours: the CA's
    directory, and the CA file that verifies it (the system's roots when unset).
    """

    challenge: str = setting("http", parse=choice("http", "sni", "tls", "dns"))
    http_bind: HostPort = setting(HostPort("0.0.0.0", 80), parse=listen_address())
    cache_dir: str = setting("/tmp", parse=text(r".+", "a directory path"))
    directory_url: str = setting(LETS_ENCRYPT, parse=text(r"https?://\S+", "an http:// or https:// URL"))
    directory_ca_cert_path: str | None = setting(None, parse=text(r".+", "a file path"))


@attrs.frozen
class DefaultsConfig:
    """C{[defaults]}: values for servers that do not set them."""

    max_connections: int = setting(0, parse=whole(0, MAX_CONNECTIONS))
    client_idle_timeout: float = setting(0.0, parse=duration())
    backend_idle_timeout: float = setting(0.0, parse=duration())
    backend_connection_timeout: float = setting(0.0, parse=duration())
    shutdown_grace: float = setting(10.0, parse=duration())
    workers: int = setting(1, parse=whole(1, 256))
    splice: bool = setting(True, parse=flag())
    udp_max_sessions: int = setting(10_000, parse=whole(0, MAX_CONNECTIONS))


@attrs.frozen
class StateConfig:
    """C{[state]}: where runtime changes made through the API persist."""

    path: str = setting(parse=text(r".+", "a file path"))


#: What a cluster's and an instance's names are.
_NAME = "a name of 1 to 64 letters, digits, '_', '-' or '.'"
#: An etcd endpoint: an http:// or https:// origin with a port.
_ETCD_ENDPOINT = r"https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\]):\d{1,5}/?"


@attrs.frozen
class ClusterConfig:
    """
    C{[cluster]} (ours): share the runtime changes with other balancers
    through etcd (L{balancer.cluster}).  C{prefix} defaults to
    C{/balancer/<cluster_name>}, C{instance} to the host name; C{etcd_ca},
    C{etcd_cert} and C{etcd_key} are PEM files for an https:// etcd.
    """

    etcd_endpoints: tuple[str, ...] = setting(
        parse=items(text(_ETCD_ENDPOINT, 'an etcd client URL like "http://127.0.0.1:2379"')))
    cluster_name: str = setting("default", parse=text(NAME_PATTERN, _NAME))
    prefix: str = setting("", parse=text(r"(/[^/\s\x00]+)+", 'a key prefix like "/balancer/default"'))
    instance: str = setting("", parse=text(f"|{NAME_PATTERN}", _NAME))
    etcd_user: str = setting("", parse=text(r"[^:\s]*", "a user name without ':' or spaces"))
    etcd_password: str = setting("", parse=text())
    etcd_ca: str = setting("", parse=text())
    etcd_cert: str = setting("", parse=text())
    etcd_key: str = setting("", parse=text())
    etcd_timeout: float = setting(2.0, parse=duration())
    lease_ttl: float = setting(10.0, parse=duration())

    def problems(self) -> Found:
        """At least one endpoint; a password with a user; a client key with its certificate; sensible times."""
        if not self.etcd_endpoints:
            yield "etcd_endpoints", "expected at least one etcd client URL"
        if self.etcd_password and not self.etcd_user:
            yield "etcd_password", "set etcd_user too"
        if bool(self.etcd_cert) != bool(self.etcd_key):
            yield "etcd_cert" if not self.etcd_cert else "etcd_key", "etcd_cert and etcd_key go together"
        if self.etcd_timeout <= 0:
            yield "etcd_timeout", "expected a duration over 0"
        if not 2 <= self.lease_ttl <= 3600:
            yield "lease_ttl", f"expected a duration from 2s to 1h, got {self.lease_ttl:g}s"

    def key_prefix(self) -> str:
        """Where this cluster's keys live: C{prefix}, or C{/balancer/<cluster_name>}."""
        return self.prefix or f"/balancer/{self.cluster_name}"

    def instance_name(self) -> str:
        """This instance's name in the cluster: C{instance}, or the host name."""
        return self.instance or socket.gethostname()


@attrs.frozen
class DiscoveryConfig:
    """C{[servers.X.discovery]}: where a server's backends come from."""

    kind: str = setting(parse=choice(*DISCOVERY_KINDS))
    failpolicy: str = setting("keeplast", parse=choice("keeplast", "setempty"))
    interval: float = setting(0.0, parse=duration())
    timeout: float = setting(0.0, parse=duration())
    # static
    static_list: tuple[BackendSpec, ...] = setting((), parse=items(backend_line()))
    # srv
    srv_lookup_server: str = setting("", parse=text(r"[^\s]+:\d{1,5}", '"host:port" of a DNS server'))
    srv_lookup_pattern: str = setting("", parse=text(r"[^\s]+", "a DNS name"))
    srv_dns_protocol: str = setting("udp", parse=choice("udp", "tcp"))
    # exec
    exec_command: tuple[str, ...] = setting((), parse=texts())
    # plaintext
    plaintext_endpoint: str = setting("", parse=text(_HTTP_URL, "an http(s):// URL without user:password@"))
    plaintext_regex_pattern: str = setting("", parse=regexp())
    # json
    json_endpoint: str = setting("", parse=text(_HTTP_URL, "an http(s):// URL without user:password@"))
    json_host_pattern: str = setting("host", parse=text())
    json_port_pattern: str = setting("port", parse=text())
    json_weight_pattern: str = setting("weight", parse=text())
    json_priority_pattern: str = setting("priority", parse=text())
    json_sni_pattern: str = setting("sni", parse=text())
    # docker
    docker_endpoint: str = setting(
        "",
        parse=text(rf"unix://\S+|(tcp|https?)://{_NO_CREDENTIALS}", "unix:///path or tcp://host:port (no user:password@)"),
    )
    docker_container_private_port: int = setting(0, parse=whole(0, 65535))
    docker_container_label: str = setting("", parse=text())
    docker_container_host_env_var: str = setting("", parse=text())
    docker_tls_enabled: bool = setting(False, parse=flag())
    docker_tls_cert_path: str = setting("", parse=text())
    docker_tls_key_path: str = setting("", parse=text())
    docker_tls_cacert_path: str = setting("", parse=text())
    # consul
    consul_host: str = setting("", parse=text(r"[^\s/]+:\d{1,5}", '"host:port" of a Consul agent'))
    consul_service_name: str = setting("", parse=text())
    consul_service_tag: str = setting("", parse=text())
    consul_service_passing_only: bool = setting(False, parse=flag())
    consul_datacenter: str = setting("", parse=text(), aliases=("consul_service_datacenter",))
    consul_auth_username: str = setting("", parse=text())
    consul_auth_password: str = setting("", parse=text())
    consul_acl_token: str = setting("", parse=text())
    consul_tls_enabled: bool = setting(False, parse=flag())
    consul_tls_cert_path: str = setting("", parse=text())
    consul_tls_key_path: str = setting("", parse=text())
    consul_tls_cacert_path: str = setting("", parse=text())
    # lxd
    lxd_server_address: str = setting("", parse=text(_LXD_ADDRESS, '"unix:", "unix:PATH" or "https://HOST:PORT"'))
    lxd_server_remote_name: str = setting("local", parse=text(_LXD_REMOTE, "a remote name (no '/', ':' or spaces)"))
    lxd_server_remote_password: str = setting("", parse=text())
    lxd_config_directory: str = setting("", parse=text())
    lxd_generate_client_certs: bool = setting(False, parse=flag())
    lxd_accept_server_cert: bool = setting(False, parse=flag())
    lxd_container_label_key: str = setting("", parse=text(_LXD_KEY, "an LXD configuration key"))
    lxd_container_label_value: str = setting("", parse=text())
    lxd_container_port: int = setting(0, parse=whole(0, 65535))
    lxd_container_port_key: str = setting("", parse=text(_LXD_KEY, "an LXD configuration key"))
    lxd_container_interface: str = setting("eth0", parse=text(_LXD_INTERFACE, "an interface name"))
    lxd_container_interface_key: str = setting("", parse=text(_LXD_KEY, "an LXD configuration key"))
    lxd_container_sni_key: str = setting("", parse=text(_LXD_KEY, "an LXD configuration key"))
    lxd_container_address_type: str = setting("IPv4", parse=choice("IPv4", "IPv6", ""))

    _REQUIRED = {
        "static": ("static_list",),
        "exec": ("exec_command",),
        "plaintext": ("plaintext_endpoint",),
        "json": ("json_endpoint",),
        "srv": ("srv_lookup_server", "srv_lookup_pattern"),
        "docker": ("docker_endpoint", "docker_container_private_port"),
        "consul": ("consul_host", "consul_service_name"),
        "lxd": ("lxd_server_address",),
    }

    def problems(self) -> Found:
        """The keys a kind cannot work without, and no keys of another kind."""
        if self.kind == "lxd":
            yield from self._lxd_problems()
        if self.kind == "plaintext" and self.plaintext_regex_pattern:
            groups = re.compile(self.plaintext_regex_pattern).groupindex
            missing = [g for g in ("host", "port") if g not in groups]
            if missing:
                yield "plaintext_regex_pattern", f"needs the named groups (?P<host>...) and (?P<port>...); missing {', '.join(missing)}"
        for key in self._REQUIRED[self.kind]:
            if not getattr(self, key):
                yield key, f'required when kind = "{self.kind}"'
        for f in attrs.fields(type(self)):
            owner = f.name.split("_")[0]
            if owner in DISCOVERY_KINDS and owner != self.kind and getattr(self, f.name) != f.default:
                yield f.name, f'belongs to discovery kind "{owner}", but kind = "{self.kind}"'


    def _lxd_problems(self) -> Found:
        """What C{kind = "lxd"} needs beyond its required address."""
        if not self.lxd_container_port and not self.lxd_container_port_key:
            yield "lxd_container_port", (
                'required when kind = "lxd", unless lxd_container_port_key names the port'
                " in each container's configuration"
            )
        if self.lxd_container_label_value and not self.lxd_container_label_key:
            yield "lxd_container_label_value", "needs lxd_container_label_key (the key whose value it filters on)"


@attrs.frozen
class HealthcheckConfig:
    """C{[servers.X.healthcheck]}: how backends are checked."""

    kind: str = setting("none", parse=choice(*HEALTHCHECK_KINDS))
    interval: float = setting(0.0, parse=duration())
    timeout: float = setting(0.0, parse=duration())
    fails: int = setting(1, parse=whole(1, 1000))
    passes: int = setting(1, parse=whole(1, 1000))
    initial_status: str = setting("healthy", parse=choice("healthy", "unhealthy"))
    # gobetween's early wiki names for the timeout; used only when timeout is not set
    ping_timeout_duration: float = setting(0.0, parse=duration())
    exec_timeout_duration: float = setting(0.0, parse=duration())
    # probe
    probe_protocol: str = setting("tcp", parse=choice("tcp", "udp", "tls"))
    probe_send: str = setting("", parse=text(nul=True))
    probe_recv: str = setting("", parse=text(nul=True))
    probe_recv_len: int = setting(0, parse=whole(0, 1 << 20))
    probe_strategy: str = setting("starts_with", parse=choice("starts_with", "regexp"))
    # exec
    exec_command: str = setting("", parse=text())
    exec_expected_positive_output: str = setting("1", parse=text())
    exec_expected_negative_output: str = setting("0", parse=text())

    @property
    def check_timeout(self) -> float:
        """How long one check may take: C{timeout}, else the old per-kind names, else the interval."""
        return self.timeout or self.ping_timeout_duration or self.exec_timeout_duration or self.interval

    def problems(self) -> Found:
        """Checks that run need an interval; each kind needs its own keys."""
        if self.kind != "none" and self.interval <= 0:
            yield "interval", f'required (a duration above 0) when kind = "{self.kind}"'
        if self.kind == "exec" and not self.exec_command:
            yield "exec_command", 'required when kind = "exec"'
        if self.kind == "probe":
            if not self.probe_recv:
                yield "probe_recv", 'required when kind = "probe"'
            if self.probe_strategy == "regexp":
                try:
                    re.compile(self.probe_recv)
                except re.error as e:
                    yield "probe_recv", f"expected a regular expression: {e}"
        if self.kind != "probe":
            for f in attrs.fields(type(self)):
                if f.name.startswith("probe_") and getattr(self, f.name) != f.default:
                    yield f.name, f'belongs to kind "probe", but kind = "{self.kind}"'


def _access_rule(value: str) -> bool:
    import ipaddress

    parts = value.split()
    if len(parts) != 2 or parts[0] not in ("allow", "deny"):
        return False
    try:
        ipaddress.ip_network(parts[1], strict=False)
    except ValueError:
        return False
    return True


@attrs.frozen
class AccessConfig:
    """C{[servers.X.access]}: client address rules, first match wins."""

    default: str = setting("allow", parse=choice("allow", "deny"))
    rules: tuple[str, ...] = setting((), parse=texts())

    def problems(self) -> Found:
        """Each rule is "allow|deny <ip or cidr>"."""
        for i, rule in enumerate(self.rules):
            if not _access_rule(rule):
                yield f"rules[{i}]", f'expected "allow <ip or cidr>" or "deny <ip or cidr>", got "{rule}"'


@attrs.frozen
class SniConfig:
    """C{[servers.X.sni]}: route by the TLS ClientHello's server name."""

    read_timeout: float = setting(2.0, parse=duration())
    unexpected_hostname_strategy: str = setting("default", parse=choice("default", "reject", "any"))
    hostname_matching_strategy: str = setting("exact", parse=choice("exact", "regexp"))


@attrs.frozen
class TlsConfig:
    """C{[servers.X.tls]}: terminate TLS (C{protocol = "tls"})."""

    cert_path: str = setting("", parse=text())
    key_path: str = setting("", parse=text())
    acme_hosts: tuple[str, ...] = setting((), parse=texts())
    min_version: str = setting("", parse=choice(*TLS_VERSIONS))
    max_version: str = setting("", parse=choice(*TLS_VERSIONS))
    ciphers: tuple[str, ...] = setting((), parse=texts())
    prefer_server_ciphers: bool = setting(False, parse=flag())
    session_tickets: bool = setting(True, parse=flag())

    def problems(self) -> Found:
        """A certificate and its key come together."""
        if not self.acme_hosts and not (self.cert_path and self.key_path):
            yield "cert_path", "cert_path and key_path are both required"


@attrs.frozen
class BackendsTlsConfig:
    """C{[servers.X.backends_tls]}: speak TLS to backends."""

    ignore_verify: bool = setting(False, parse=flag())
    root_ca_cert_path: str | None = setting(None, parse=text())
    cert_path: str | None = setting(None, parse=text())
    key_path: str | None = setting(None, parse=text())
    min_version: str = setting("", parse=choice(*TLS_VERSIONS))
    max_version: str = setting("", parse=choice(*TLS_VERSIONS))
    ciphers: tuple[str, ...] = setting((), parse=texts())
    prefer_server_ciphers: bool = setting(False, parse=flag())
    session_tickets: bool = setting(True, parse=flag())

    def problems(self) -> Found:
        """A client certificate and its key come together."""
        if (self.cert_path is None) != (self.key_path is None):
            yield "cert_path", "cert_path and key_path go together"


@attrs.frozen
class UdpConfig:
    """C{[servers.X.udp]}: datagram session limits (0 is unlimited)."""

    max_requests: int = setting(0, parse=whole(0, MAX_COUNT))
    max_responses: int = setting(0, parse=whole(0, MAX_COUNT))
    transparent: bool = setting(False, parse=flag())

    def problems(self) -> Found:
        """Transparent UDP (sending as the client's address) needs IP_TRANSPARENT and is not offered."""
        if self.transparent:
            yield "transparent", "transparent UDP proxying is not supported; remove it or set it to false"


@attrs.frozen
class ProxyProtocolConfig:
    """C{[servers.X.proxy_protocol]}: send a PROXY header to backends."""

    version: str = setting("1", parse=choice("1", "2"))


#: The keys of a server that make its listener (changing any of them needs a new one).
LISTENER_KEYS = ("bind", "protocol", "tls", "sni", "udp")


@attrs.frozen
class ServerConfig:
    """
    C{[servers.<name>]}: one listener, its balancing and its backends.

    The connection options left unset here take their value from
    C{[defaults]} when the whole configuration is resolved.
    """

    bind: HostPort = setting(parse=listen_address())
    discovery: DiscoveryConfig = setting(parse=section(DiscoveryConfig))
    protocol: str = setting("tcp", parse=choice(*PROTOCOLS))
    balance: str = setting("weight", parse=choice(*STRATEGIES))
    max_connections: int | None = setting(None, parse=whole(0, MAX_CONNECTIONS))
    client_idle_timeout: float | None = setting(None, parse=duration())
    backend_idle_timeout: float | None = setting(None, parse=duration())
    backend_connection_timeout: float | None = setting(None, parse=duration())
    healthcheck: HealthcheckConfig = setting(HealthcheckConfig(), parse=section(HealthcheckConfig))
    access: AccessConfig | None = setting(None, parse=section(AccessConfig))
    sni: SniConfig | None = setting(None, parse=section(SniConfig))
    tls: TlsConfig | None = setting(None, parse=section(TlsConfig))
    backends_tls: BackendsTlsConfig | None = setting(None, parse=section(BackendsTlsConfig))
    udp: UdpConfig | None = setting(None, parse=section(UdpConfig))
    proxy_protocol: ProxyProtocolConfig | None = setting(None, parse=section(ProxyProtocolConfig))

    def problems(self) -> Found:
        """Sections that only make sense with some protocols."""
        if self.protocol == "tls" and self.tls is None:
            yield "tls", 'required when protocol = "tls" (cert_path and key_path)'
        if self.protocol != "tls" and self.tls is not None:
            yield "tls", f'only used with protocol = "tls", but protocol = "{self.protocol}"'
        if self.protocol != "udp" and self.udp is not None:
            yield "udp", f'only used with protocol = "udp", but protocol = "{self.protocol}"'
        if self.protocol == "udp":
            for key in ("sni", "backends_tls", "proxy_protocol"):
                if getattr(self, key) is not None:
                    yield key, 'not available with protocol = "udp"'

    def with_defaults(self, defaults: DefaultsConfig) -> ServerConfig:
        """This server with every unset connection option taken from C{defaults}."""
        keys = ("max_connections", "client_idle_timeout", "backend_idle_timeout", "backend_connection_timeout")
        return attrs.evolve(
            self, **{k: getattr(defaults, k) for k in keys if getattr(self, k) is None}
        )


@attrs.frozen
class Config:
    """The whole configuration file."""

    logging: LoggingConfig = setting(LoggingConfig(), parse=section(LoggingConfig))
    api: ApiConfig = setting(ApiConfig(), parse=section(ApiConfig))
    metrics: MetricsConfig = setting(MetricsConfig(), parse=section(MetricsConfig))
    profiler: ProfilerConfig = setting(ProfilerConfig(), parse=section(ProfilerConfig))
    acme: AcmeConfig | None = setting(None, parse=section(AcmeConfig))
    defaults: DefaultsConfig = setting(DefaultsConfig(), parse=section(DefaultsConfig))
    state: StateConfig | None = setting(None, parse=section(StateConfig))
    cluster: ClusterConfig | None = setting(None, parse=section(ClusterConfig))
    servers: dict[str, ServerConfig] = setting(factory=dict, parse=named_sections(ServerConfig))
    overrides: dict[str, OverrideConfig] = setting(factory=dict, parse=backend_tables(OverrideConfig))
