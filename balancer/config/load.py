"""
Reading a configuration file (TOML, or JSON of the same schema) into a L{Config}.

Everything wrong with a file is reported at once, in a L{ConfigError} whose
lines each name the file, the dotted key path, the bad value and what was
expected.  Nothing here binds or connects.

Reading a file checks its schema only: the files it names (TLS certificates
and keys) are checked by L{check_resources}, a separate step that the
command line runs before starting and the API runs on each server it is
given (L{server_from_mapping}), so that a file can be validated on another
machine than the one it runs on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Mapping

import attrs

from balancer.config.decode import DecodeError, loads_json, loads_toml
from balancer.config.errors import ConfigError, Problem, Problems
from balancer.config.fields import INVALID, NAME_PATTERN, NAME_RULE, build, join
from balancer.config.schema import AcmeConfig, ClusterConfig, Config, ServerConfig


def read_config_file(path: str) -> Config:
    """
    Load and validate the configuration at C{path}.

    A name ending in C{.json} is read as JSON, anything else as TOML.

    @raise ConfigError: the file is missing, unreadable, not TOML/JSON, or
        holds any invalid setting (all of them are listed).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, [Problem("", f"cannot read the configuration file: {e.strerror}")])
    return parse_config(data, path, as_json=path.endswith(".json"))


def parse_config(data: bytes, source: str, *, as_json: bool = False) -> Config:
    """
    Parse and validate configuration bytes.

    @param source: the name used in error messages (a file path).
    @raise ConfigError: listing every problem found.
    """
    raw = _decode(data, source, as_json)
    return config_from_mapping(raw, source)


def config_from_mapping(raw: Mapping[str, Any], source: str) -> Config:
    """
    Validate an already decoded configuration mapping.

    @raise ConfigError: listing every problem found.
    """
    problems = Problems()
    config = build(Config, raw, "", problems)
    if config is not INVALID and not len(problems):
        config = resolve_defaults(config)
        for path, message in _duplicate_binds(config.servers):
            problems.add(path, message)
    if len(problems) or config is INVALID:
        raise ConfigError(source, list(problems))
    return config


def server_from_mapping(name: str, raw: object, source: str, config: Config) -> ServerConfig:
    """
    Validate one server definition (an API request body) against C{config}.

    The new server takes C{config}'s C{[defaults]}, and must not bind an
    address another server of C{config} already uses.

    @raise ConfigError: listing every problem, with paths C{servers.<name>...}.
    """
    problems = Problems()
    path = join("servers", name)
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(source, [Problem(path, NAME_RULE)])
    server = build(ServerConfig, raw, path, problems)
    if server is not INVALID and not len(problems):
        server = server.with_defaults(config.defaults)
        others = {n: s for n, s in config.servers.items() if n != name}
        for where, message in _duplicate_binds({**others, name: server}):
            if where.startswith(path):
                problems.add(where, message)
    if len(problems) or server is INVALID:
        raise ConfigError(source, list(problems))
    _check_server(path, server, problems, config.acme)
    if len(problems):
        raise ConfigError(source, list(problems))
    return server


def check_resources(config: Config, source: str) -> None:
    """
    Check what C{config}'s servers need beyond their schema: that their TLS
    certificates, keys and CA files can be read and used (and the key is
    the certificate's), that C{acme_hosts} come with an C{[acme]} section,
    and that C{[cluster]}'s TLS files can be used.

    @param source: the name used in error messages (a file path).
    @raise ConfigError: listing every problem, with paths C{servers.<name>.tls...}.
    """
    problems = Problems()
    for name, server in config.servers.items():
        _check_server(join("servers", name), server, problems, config.acme)
    if config.cluster is not None:
        _check_cluster_files(config.cluster, problems)
    if len(problems):
        raise ConfigError(source, list(problems))


def _check_cluster_files(cluster: ClusterConfig, problems: Problems) -> None:
    """C{[cluster]}'s CA, client certificate and key can be read and used."""
    from balancer.tlsfiles import TLSError, load_certificates, load_private_key, load_trust_root

    checks = ((cluster.etcd_ca, "cluster.etcd_ca", load_trust_root),
              (cluster.etcd_cert, "cluster.etcd_cert", load_certificates),
              (cluster.etcd_key, "cluster.etcd_key", load_private_key))
    for path, key, load in checks:
        if not path:
            continue
        try:
            load(path, key)
        except TLSError as e:
            problems.add(e.key, e.message)


#: An C{acme_hosts} name: two or more DNS labels.
ACME_HOST = r"(?i)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


def _check_server(path: str, server: ServerConfig, problems: Problems, acme: AcmeConfig | None) -> None:
    # Imported here: balancer.proxy.tls imports the schema, whose package imports this module.
    from balancer.proxy.tls import check_tls_files

    tls = server.tls
    if server.protocol == "tls" and tls is not None and tls.acme_hosts and acme is None:
        problems.add(f"{path}.tls.acme_hosts", "needs an [acme] section (or give cert_path and key_path instead)")
    for i, host in enumerate(tls.acme_hosts if tls is not None else ()):
        if not re.fullmatch(ACME_HOST, host) or host.rsplit(".", 1)[-1].isdigit():
            problems.add(
                f"{path}.tls.acme_hosts[{i}]",
                f'expected a DNS name like "www.example.com", got "{host}" '
                "(no wildcard, IP address or single label: a CA validates a name with HTTP-01 or TLS-ALPN-01)",
            )
    for key, message in check_tls_files(server):
        problems.add(f"{path}.{key}", message)


def resolve_defaults(config: Config) -> Config:
    """Return C{config} with C{[defaults]} applied to every server."""
    servers = {name: s.with_defaults(config.defaults) for name, s in config.servers.items()}
    return attrs.evolve(config, servers=servers)


def _decode(data: bytes, source: str, as_json: bool) -> Mapping[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, [Problem("", f"not UTF-8 text (byte {e.start})")])
    try:
        decoded = loads_json(text) if as_json else loads_toml(text)
    except DecodeError as e:
        raise ConfigError(source, [Problem("", f"invalid {'JSON' if as_json else 'TOML'}: {e}")])
    if not isinstance(decoded, dict):
        raise ConfigError(source, [Problem("", "expected a JSON object at the top level")])
    return decoded


def _socket_family(protocol: str) -> str:
    return "udp" if protocol == "udp" else "tcp"


def _duplicate_binds(servers: Mapping[str, ServerConfig]) -> list[tuple[str, str]]:
    """Servers that would listen on the same address and transport."""
    owners: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for name, server in servers.items():
        if server.bind.port == 0:
            continue
        key = (_socket_family(server.protocol), server.bind.listen_host, server.bind.port)
        owners[key].append(name)
    found = []
    for (family, _, _), names in owners.items():
        for name in names[1:]:
            found.append(
                (
                    join(join("servers", name), "bind"),
                    f'"{servers[name].bind}" ({family}) is already bound by server "{names[0]}"',
                )
            )
    return found
