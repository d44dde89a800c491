"""The discovery kinds by their C{kind} name, and how to make one."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Protocol

from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import IDiscovery
from balancer.discovery.consul import ConsulDiscovery
from balancer.discovery.docker import DockerDiscovery
from balancer.discovery.exec import ExecDiscovery
from balancer.discovery.json_kind import JsonDiscovery
from balancer.discovery.lxd import LxdDiscovery
from balancer.discovery.plaintext import PlaintextDiscovery
from balancer.discovery.srv import SrvDiscovery
from balancer.discovery.static import StaticDiscovery


class DiscoveryKind(Protocol):
    """A discovery class: built from its configuration and a reactor, with a default fetch timeout."""

    @property
    def DEFAULT_TIMEOUT(self) -> float:
        """The fetch timeout in seconds when the configuration's C{timeout} is 0 (0: none)."""

    def __call__(self, config: DiscoveryConfig, reactor: Any) -> IDiscovery:
        """The discovery C{config} describes, asking its source through C{reactor}."""


KINDS: Mapping[str, DiscoveryKind] = MappingProxyType(
    {
        "static": StaticDiscovery,
        "exec": ExecDiscovery,
        "plaintext": PlaintextDiscovery,
        "json": JsonDiscovery,
        "srv": SrvDiscovery,
        "docker": DockerDiscovery,
        "consul": ConsulDiscovery,
        "lxd": LxdDiscovery,
    }
)
"""
The discovery classes by C{kind}.  Each is called as C{cls(config, reactor)}
and has C{DEFAULT_TIMEOUT}, the fetch timeout in seconds when the
configuration's C{timeout} is 0 (0: none).
"""


def _kind(config: DiscoveryConfig) -> DiscoveryKind:
    try:
        return KINDS[config.kind]
    except KeyError:
        known = ", ".join(KINDS)
        raise ValueError(f'discovery kind "{config.kind}" is not supported (supported: {known})') from None


def make_discovery(config: DiscoveryConfig, reactor: Any) -> IDiscovery:
    """
    The discovery that C{config} describes.

    @param reactor: the reactor its lookups use (connections, processes).
    @raise ValueError: when the kind is not supported or its
        settings cannot work (a plaintext pattern without C{host}/C{port} groups).
    """
    return _kind(config)(config, reactor)


def fetch_timeout(config: DiscoveryConfig) -> float:
    """
    How long one fetch may take, in seconds: C{timeout}, or when it is 0 the
    kind's default (exec 3, consul 2, plaintext/json/srv/docker/lxd 5, static: no limit).

    @raise ValueError: when the kind is not supported.
    """
    return config.timeout or _kind(config).DEFAULT_TIMEOUT
