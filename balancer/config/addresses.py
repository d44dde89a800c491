"""Parsing of listen addresses (C{"host:port"}) and static backend lines."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import attrs

from balancer.config.errors import Problems
from balancer.config.fields import INVALID, MAX_CONNECTIONS, MAX_COUNT, Parser, describe, quoted

_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]\x00]*)):(?P<port>\d{1,5})$")
_BACKEND = re.compile(
    r"^(?P<address>[^\s\x00]+)"
    r"(?:\s+weight=(?P<weight>\d{1,10}))?"
    r"(?:\s+priority=(?P<priority>\d{1,10}))?"
    r"(?:\s+max_connections=(?P<max_connections>\d{1,10}))?"
    r"(?:\s+sni=(?P<sni>[^\s\x00]+))?\s*$"
)


# A backend's host name: letters, digits, "_" and "-" in dot-separated labels, none starting
# or ending with "-" (so that no host reads as a command-line option where a command gets it,
# as an exec health check does), an optional final dot.
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
#: The pattern of a host name (a backend's, or one the admin API answers to).
HOST_NAME = rf"{_LABEL}(\.{_LABEL})*\.?"
_BACKEND_NAME = re.compile(HOST_NAME)


class AddressError(ValueError):
    """A host:port or backend line that does not parse; the message says why."""


def join_host_port(host: str, port: int) -> str:
    """C{host:port}, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class HostPort:
    """A host (empty for "all interfaces") and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def listen_host(self) -> str:
        """The interface to bind: C{""} (all IPv4 interfaces) when no host is given."""
        return {"": "0.0.0.0", "localhost": "127.0.0.1"}.get(self.host, self.host)


def split_host_port(value: str, *, allow_port_zero: bool) -> HostPort:
    """
    Split C{"host:port"} (or C{"[v6]:port"}, or C{":port"}).

    @param allow_port_zero: whether port 0 (a free port chosen at bind) is valid.
    @raise AddressError: when the text is not of that form or the port is out of range.
    """
    match = _HOST_PORT.match(value)
    if match is None:
        raise AddressError(f'expected "host:port" (IPv6 as "[::1]:port"), got {quoted(value)}')
    port = int(match.group("port"))
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise AddressError(f'expected a port from {lowest} to 65535 in "host:port", got {quoted(value)}')
    return HostPort(match.group("v6") or match.group("host") or "", port)


def listen_address() -> Parser:
    """A bind address; port 0 picks a free port."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, str):
            problems.add(path, f'expected a "host:port" string, got {describe(value)}')
            return INVALID
        try:
            return split_host_port(value, allow_port_zero=True)
        except AddressError as e:
            problems.add(path, str(e))
            return INVALID

    return parse


@attrs.frozen
class BackendSpec:
    """
    One backend as configured or discovered.

    @ivar weight: share of traffic under C{balance = "weight"} (0: none).
    @ivar priority: lower is preferred under C{balance = "weight"}.
    @ivar max_connections: 0 is unlimited.
    @ivar sni: the TLS server name this backend serves, for SNI routing.
    """

    host: str
    port: int
    weight: int = 1
    priority: int = 1
    max_connections: int = 0
    sni: str | None = None

    @property
    def key(self) -> str:
        """The backend's identity, C{host:port}."""
        return join_host_port(self.host, self.port)

    def to_line(self) -> str:
        """The C{static_list} line that parses back to this backend."""
        parts = [self.key, f"weight={self.weight}", f"priority={self.priority}"]
        if self.max_connections:
            parts.append(f"max_connections={self.max_connections}")
        if self.sni is not None:
            parts.append(f"sni={self.sni}")
        return " ".join(parts)


def is_loopback(host: str) -> bool:
    """Whether the IP address C{host} is this host's loopback (127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6)."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_backend_host(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address (no brackets) or a host name (L{_BACKEND_NAME})."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _BACKEND_NAME.fullmatch(host) is not None
    return True


def parse_backend_line(line: str) -> BackendSpec:
    """
    Parse C{"host:port weight=N priority=N max_connections=N sni=NAME"}.

    Options are optional but must come in that order.

    @raise AddressError: naming what is wrong with the line.
    """
    match = _BACKEND.match(line.strip())
    if match is None:
        raise AddressError(
            f'expected "host:port [weight=N] [priority=N] [max_connections=N] [sni=NAME]" '
            f'(options in that order), got {quoted(line)}'
        )
    address = split_host_port(match.group("address"), allow_port_zero=False)
    if not address.host:
        raise AddressError(f'a backend needs a host before ":port", got {quoted(line)}')
    if not is_backend_host(address.host):
        raise AddressError(
            f'expected a host name (letters, digits, "-", "_", ".") or an IP address, got {quoted(address.host)}'
        )
    numbers = {
        name: int(match.group(name))
        for name in ("weight", "priority", "max_connections")
        if match.group(name) is not None
    }
    for name, value in numbers.items():
        highest = MAX_CONNECTIONS if name == "max_connections" else MAX_COUNT
        if value > highest:
            raise AddressError(f'expected {name}=N with N from 0 to {highest}, got {quoted(line)}')
    return BackendSpec(address.host, address.port, sni=match.group("sni"), **numbers)


def backend_line() -> Parser:
    """A static_list entry parsed to a L{BackendSpec}."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, str):
            problems.add(path, f'expected a backend string like "127.0.0.1:8000 weight=1", got {describe(value)}')
            return INVALID
        try:
            return parse_backend_line(value)
        except AddressError as e:
            problems.add(path, str(e))
            return INVALID

    return parse
