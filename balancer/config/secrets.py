"""
The configuration's secrets: which keys hold them, hiding them from
read-only accounts (L{redact}), and keeping them when a write sends back the
placeholder it was shown (L{keep_secrets}).

Secrets are the passwords and tokens the balancer presents to others
(Consul, LXD), the API's own credentials, and the paths of private keys
(a key's path is not the key, but it names the one file a reader of the
host should not see; certificate and CA paths stay visible).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from balancer.config.errors import ConfigError, Problem
from balancer.config.fields import join

#: What a read-only account sees instead of a secret.
REDACTED = "********"

#: Where secrets are in a server's definition (C{[servers.<name>]}), as key paths.
SERVER_SECRETS: tuple[tuple[str, ...], ...] = (
    ("discovery", "consul_auth_password"),
    ("discovery", "consul_acl_token"),
    ("discovery", "lxd_server_remote_password"),
    ("discovery", "consul_tls_key_path"),
    ("discovery", "docker_tls_key_path"),
    ("tls", "key_path"),
    ("backends_tls", "key_path"),
)

#: Where secrets are in C{[api]}; C{*} is every item of an array.
API_SECRETS: tuple[tuple[str, ...], ...] = (
    ("basic_auth", "password"),
    ("users", "*", "password"),
    ("users", "*", "password_hash"),
    ("tls", "key_path"),
)

#: Where secrets are in C{[cluster]}.
CLUSTER_SECRETS: tuple[tuple[str, ...], ...] = (("etcd_password",), ("etcd_key",))

#: Where secrets are in the whole configuration; C{*} is every server.
CONFIG_SECRETS = (
    tuple(("api", *p) for p in API_SECRETS)
    + tuple(("cluster", *p) for p in CLUSTER_SECRETS)
    + tuple(("servers", "*", *p) for p in SERVER_SECRETS)
)


def redact(value: Any, paths: tuple[tuple[str, ...], ...]) -> Any:
    """
    C{value} (a mapping, or a configuration object) with every non-empty
    string at one of C{paths} replaced by L{REDACTED}; C{value} itself is
    not changed.

    @param paths: L{SERVER_SECRETS} for a server's definition or
        L{balancer.config.schema.ServerConfig}, L{CONFIG_SECRETS} for a
        L{balancer.config.schema.Config}.
    """
    for path in paths:
        value = _replace(value, path, _hide)
    return value


def keep_secrets(definition: object, stored: dict[str, Any] | None, name: str, source: str) -> object:
    """
    A server definition sent by a write, where each secret given as
    L{REDACTED} is the secret stored for it: sending back what a read showed
    keeps the secret instead of setting it to asterisks.

    @param stored: the server's current definition, None for a new server.
    @raise ConfigError: naming each L{REDACTED} secret with nothing stored to keep.
    """
    problems = []
    for path in SERVER_SECRETS:
        if _get(definition, path) != REDACTED:
            continue
        kept = _get(stored, path)
        if isinstance(kept, str) and kept:
            definition = _replace(definition, path, lambda _: kept)
        else:
            key = join("servers", name)
            for segment in path:
                key = join(key, segment)
            problems.append(Problem(key, f'"{REDACTED}" stands for a secret this server does not have; give the value'))
    if problems:
        raise ConfigError(source, problems)
    return definition


def _hide(value: Any) -> Any:
    return REDACTED if isinstance(value, str) and value else value


def _get(value: Any, path: tuple[str, ...]) -> Any:
    """The value at C{path} in nested mappings, or None."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _replace(value: Any, path: tuple[str, ...], change: Callable[[Any], Any]) -> Any:
    """C{value} with C{change} applied at C{path} (through mappings, attrs objects, arrays), where it exists."""
    if not path:
        return change(value)
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(value, dict):
            return {k: _replace(v, rest, change) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(_replace(v, rest, change) for v in value)
        return value
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, change)} if head in value else value
    if attrs.has(type(value)):
        return attrs.evolve(value, **{head: _replace(getattr(value, head), rest, change)})
    return value
