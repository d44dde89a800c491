"""
PROXY protocol headers (HAProxy's proxy-protocol.txt, versions 1 and 2) that
tell a backend the client's address and the address it connected to.

The addresses are Twisted C{IAddress}es (C{IPv4Address}, C{IPv6Address}) as
a transport's C{getPeer()} and C{getHost()} return them.  An IPv4-mapped IPv6
address (a dual-stack listener's IPv4 client) is sent as IPv4, as gobetween
does.  When the two addresses are not of one IP family, or not IP at all, the
header says so: C{UNKNOWN} in version 1, C{AF_UNSPEC} in version 2, and the
backend uses the connection's own addresses.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.interfaces import IAddress

V2_SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
"""The 12 bytes that start every version 2 header."""

_V2_PROXY = 0x21  # version 2, command PROXY
_AF_UNSPEC = 0x00
_AF_INET = 0x10
_AF_INET6 = 0x20
_STREAM = 0x01
_DGRAM = 0x02

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]


def _endpoint(address: IAddress) -> Endpoint | None:
    """The IP (IPv4-mapped IPv6 as IPv4, scope dropped) and port of an address, or C{None}."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, port
    return ip, port


def _pair(client: IAddress, server: IAddress) -> tuple[Endpoint, Endpoint] | None:
    """Both endpoints when they are IP of one family, else C{None}."""
    source, destination = _endpoint(client), _endpoint(server)
    if source is None or destination is None or source[0].version != destination[0].version:
        return None
    return source, destination


def _is_udp(address: IAddress) -> bool:
    return getattr(address, "type", "TCP") == "UDP"


def header_v1(client: IAddress, server: IAddress) -> bytes:
    """
    The version 1 (text) header for a TCP connection from C{client} to C{server}.

    For example C{b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\\r\\n"}.

    @param client: the client's address (the accepted transport's C{getPeer()}).
    @param server: the address the client connected to (its C{getHost()}).
    @raise ValueError: for UDP addresses, which version 1 cannot carry.
    """
    if _is_udp(client):
        raise ValueError("PROXY protocol version 1 carries TCP connections only; use version 2 for UDP")
    pair = _pair(client, server)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (source, source_port), (destination, destination_port) = pair
    family = "TCP4" if source.version == 4 else "TCP6"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode("ascii")


def header_v2(client: IAddress, server: IAddress) -> bytes:
    """
    The version 2 (binary) header, command PROXY, for a TCP connection or a
    UDP session from C{client} to C{server}.

    Transport is C{STREAM} for TCP addresses and C{DGRAM} for UDP ones (the
    C{type} of C{client}); the family is C{AF_INET} or C{AF_INET6}; no TLVs.

    @param client: the client's address.
    @param server: the address the client sent to.
    """
    pair = _pair(client, server)
    if pair is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, _AF_UNSPEC, 0)
    (source, source_port), (destination, destination_port) = pair
    family = _AF_INET if source.version == 4 else _AF_INET6
    transport = _DGRAM if _is_udp(client) else _STREAM
    addresses = source.packed + destination.packed + struct.pack("!HH", source_port, destination_port)
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family | transport, len(addresses)) + addresses


def header(version: str, client: IAddress, server: IAddress) -> bytes:
    """The header of C{version} (C{"1"} or C{"2"}, as in C{[proxy_protocol]}) for C{client} to C{server}."""
    if version == "1":
        return header_v1(client, server)
    if version == "2":
        return header_v2(client, server)
    raise ValueError(f'unknown PROXY protocol version "{version}" (known: 1, 2)')
