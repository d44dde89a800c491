"""
Access rules: which client addresses a server accepts (C{[servers.X.access]}).

gobetween's semantics: the rules are tried in order, the first one whose
address or network contains the client decides, and C{default} decides when
none does.  An IPv4 client seen through a dual-stack IPv6 listener
(C{::ffff:10.0.0.1}) is the IPv4 address it stands for, as Go's C{net.IP}
treats it, so IPv4 rules match it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Sequence

from balancer.config.schema import AccessConfig

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_MAPPED_NETWORK = ipaddress.IPv6Network("::ffff:0:0/96")

Rule = tuple[bool, int, int, int]
"""One compiled rule: (allow, IP version, network as an integer, netmask as an integer)."""


def _address(host: str) -> tuple[int, int] | None:
    """C{(version, integer)} of an IP address text; IPv4-mapped IPv6 is IPv4; C{None} if not an IP."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except OSError:
        return None
    if packed.startswith(_MAPPED_PREFIX):
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def compile_rule(rule: str) -> Rule:
    """
    Compile one C{"allow|deny <ip or cidr>"} rule.

    A single address is a network of one address; host bits of a CIDR are
    ignored (C{10.1.2.3/8} is C{10.0.0.0/8}), as Go's C{net.ParseCIDR} does.
    An IPv4-mapped IPv6 network of prefix 96 or longer is the IPv4 network it
    stands for.

    @raise ValueError: when the rule does not have that form.
    """
    parts = rule.split()
    if len(parts) != 2 or parts[0] not in ("allow", "deny"):
        raise ValueError(f'expected "allow <ip or cidr>" or "deny <ip or cidr>", got "{rule}"')
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(parts[1], strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_NETWORK):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return parts[0] == "allow", network.version, int(network.network_address), int(network.netmask)


class AccessRules:
    """
    An ordered list of allow/deny rules and a default, compiled once.

    @ivar default: whether a client that no rule matches is allowed.
    """

    def __init__(self, rules: Sequence[Rule], default: bool) -> None:
        self._rules = tuple(rules)
        self.default = default

    @classmethod
    def from_config(cls, config: AccessConfig) -> AccessRules:
        """
        Compile a validated C{[access]} section.

        @raise ValueError: on a rule that does not parse (the loader reports
            those at load, so this only happens with unvalidated input).
        """
        return cls([compile_rule(rule) for rule in config.rules], config.default == "allow")

    def allows(self, host: str) -> bool:
        """
        Whether a client from C{host} may connect.

        @param host: the client's IP address as text (IPv4, IPv6, IPv4-mapped
            IPv6, or IPv6 with a C{%scope}).  A host that is not an IP address
            matches no rule and gets the default.
        """
        address = _address(host)
        if address is None:
            return self.default
        version, value = address
        for allow, rule_version, network, mask in self._rules:
            if rule_version == version and value & mask == network:
                return allow
        return self.default
