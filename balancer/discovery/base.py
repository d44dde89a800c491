"""
What every discovery kind shares: the L{IDiscovery} interface, the error a
failed fetch carries, and the checked construction of a discovered backend.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from balancer.config.addresses import BackendSpec, is_backend_host


class IDiscovery(Interface):
    """One source of a server's backends (a C{[servers.X.discovery]} kind)."""

    def fetch() -> Deferred[list[BackendSpec]]:
        """
        Look the backends up once.

        The caller bounds the lookup: cancelling the L{Deferred} abandons it
        (closes the connection, kills the process) and fails it.

        @return: fires with the backends found (possibly none), or fails
            (L{DiscoveryError} or a connection error) when the source could
            not be asked or its answer does not parse.
        """


class DiscoveryError(Exception):
    """A fetch failed; the message says what the source did or sent."""


def _number(name: str, value: Any, default: int | None, lowest: int, highest: int) -> int:
    """
    C{value} (an int, an integral float or a string of digits) as an int in
    range; C{default} when it is missing, which is an error if C{default} is C{None}.
    """
    if value is None or value == "":
        if default is None:
            raise DiscoveryError(f"{name}: missing")
        return default
    if isinstance(value, bool):
        raise DiscoveryError(f"{name}: expected a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not lowest <= value <= highest:
        raise DiscoveryError(f"{name}: expected a whole number from {lowest} to {highest}, got {value!r}")
    return value


def make_backend(
    host: Any,
    port: Any,
    weight: Any = None,
    priority: Any = None,
    sni: Any = None,
    max_connections: Any = None,
) -> BackendSpec:
    """
    A L{BackendSpec} from discovered values, checked.

    Numbers may come as ints or as text (regular expression groups, JSON
    strings); C{None} or C{""} means "not given": weight and priority are
    then 1, max_connections 0 (unlimited), sni none.  An IPv6 host may be
    written in brackets.

    @raise DiscoveryError: naming the value that is not a host, a port from 1
        to 65535 or a whole number.
    """
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
        raise DiscoveryError(f"host: expected a host name or IP address, got {host!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not is_backend_host(host):
        raise DiscoveryError(
            f'host: expected a host name (letters, digits, "-", "_", ".") or an IP address, got {host!r}'
        )
    if sni is not None and not isinstance(sni, str):
        raise DiscoveryError(f"sni: expected a server name, got {sni!r}")
    return BackendSpec(
        host,
        _number("port", port, None, 1, 65535),
        weight=_number("weight", weight, 1, 0, 2**31 - 1),
        priority=_number("priority", priority, 1, 0, 2**31 - 1),
        max_connections=_number("max_connections", max_connections, 0, 0, 2**31 - 1),
        sni=sni or None,
    )
