"""
A test backend that speaks the PROXY protocol: it reads a version 1 or 2
header, records what it says, then echoes every later byte.

Its parser follows HAProxy's proxy-protocol.txt on its own and shares no code
with L{balancer.proxy.proxy_protocol}, so a test of the builder against it
checks the builder against the specification, not against itself.
"""

from __future__ import annotations

import socket
import struct
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from tests.support.transports import ITCPStream

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
_V2_FAMILIES = {
    0x11: ("TCP4", socket.AF_INET, 4),
    0x12: ("UDP4", socket.AF_INET, 4),
    0x21: ("TCP6", socket.AF_INET6, 16),
    0x22: ("UDP6", socket.AF_INET6, 16),
}


class ProxyProtocolPeer(Protocol):
    """
    One connection to the test backend.

    @ivar version: 1 or 2 once a header was read, else C{None}.
    @ivar command: C{"PROXY"} or C{"LOCAL"} (always C{"PROXY"} in version 1).
    @ivar protocol: C{"TCP4"}, C{"TCP6"}, C{"UDP4"}, C{"UDP6"} or C{"UNKNOWN"}.
    @ivar source: the client's C{(host, port)} the header carries, or C{None}.
    @ivar destination: the C{(host, port)} the client connected to, or C{None}.
    @ivar error: why the header was refused (the connection is then closed).
    @ivar received: bytes received after the header (and echoed).
    @ivar lost: fires when the connection has closed.
    """

    transport: ITCPStream

    def __init__(self) -> None:
        self.version: int | None = None
        self.command = ""
        self.protocol = ""
        self.source: tuple[str, int] | None = None
        self.destination: tuple[str, int] | None = None
        self.error = ""
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self._buffer = b""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self.version is not None:
            self._echo(data)
            return
        self._buffer += data
        try:
            rest = self._parse()
        except ValueError as e:
            self.error = str(e)
            self.transport.loseConnection()
            return
        if rest is None:
            return
        self._buffer = b""
        factory = self.factory
        if isinstance(factory, ProxyProtocolPeerFactory):
            factory.header_read(self)
        if rest:
            self._echo(rest)

    def _echo(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)

    def _parse(self) -> bytes | None:
        """Parse the header if complete: the bytes after it, or C{None} for "need more"."""
        buffer = self._buffer
        if buffer[:1] == b"P":
            return self._parse_v1(buffer)
        if buffer[:1] == b"\r":
            return self._parse_v2(buffer)
        raise ValueError(f"not a PROXY header: {buffer[:16]!r}")

    def _parse_v1(self, buffer: bytes) -> bytes | None:
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) >= V1_MAX or not (buffer.startswith(b"PROXY ") or b"PROXY ".startswith(buffer)):
                raise ValueError("no version 1 header")
            return None
        fields = buffer[:end].decode("ascii").split(" ")
        if fields[0] != "PROXY" or len(fields) < 2:
            raise ValueError(f"bad version 1 header {buffer[:end]!r}")
        self.version, self.command, self.protocol = 1, "PROXY", fields[1]
        if fields[1] == "UNKNOWN":
            return buffer[end + 2 :]
        if fields[1] not in ("TCP4", "TCP6") or len(fields) != 6:
            raise ValueError(f"bad version 1 header {buffer[:end]!r}")
        family = socket.AF_INET if fields[1] == "TCP4" else socket.AF_INET6
        for host in fields[2:4]:
            socket.inet_pton(family, host)
        self.source = (fields[2], _port(fields[4]))
        self.destination = (fields[3], _port(fields[5]))
        return buffer[end + 2 :]

    def _parse_v2(self, buffer: bytes) -> bytes | None:
        if not SIGNATURE.startswith(buffer[:12]):
            raise ValueError("bad version 2 signature")
        if len(buffer) < 16:
            return None
        version_command, family, length = struct.unpack("!BBH", buffer[12:16])
        if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
            raise ValueError(f"bad version/command byte 0x{version_command:02x}")
        if len(buffer) < 16 + length:
            return None
        self.version = 2
        self.command = "PROXY" if version_command & 0x0F else "LOCAL"
        body = buffer[16 : 16 + length]
        if family not in _V2_FAMILIES:
            self.protocol = "UNKNOWN"
            return buffer[16 + length :]
        self.protocol, address_family, size = _V2_FAMILIES[family]
        if length < 2 * size + 4:
            raise ValueError(f"address block of {length} bytes is too short for {self.protocol}")
        source = socket.inet_ntop(address_family, body[:size])
        destination = socket.inet_ntop(address_family, body[size : 2 * size])
        source_port, destination_port = struct.unpack("!HH", body[2 * size : 2 * size + 4])
        self.source = (source, source_port)
        self.destination = (destination, destination_port)
        return buffer[16 + length :]


def _port(text: str) -> int:
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ValueError(f"bad port {text!r}")
    return int(text)


class ProxyProtocolPeerFactory(Factory):
    """Builds L{ProxyProtocolPeer}s and hands each out once its header is read."""

    protocol = ProxyProtocolPeer
    noisy = False

    def __init__(self) -> None:
        self._read: list[ProxyProtocolPeer] = []
        self._waiting: list[Deferred[ProxyProtocolPeer]] = []

    def header_read(self, peer: ProxyProtocolPeer) -> None:
        """Called by a peer once its header is parsed."""
        if self._waiting:
            self._waiting.pop(0).callback(peer)
        else:
            self._read.append(peer)

    def next_peer(self) -> Deferred[ProxyProtocolPeer]:
        """Fires with the next peer whose header was read."""
        if self._read:
            return succeed(self._read.pop(0))
        waiting: Deferred[ProxyProtocolPeer] = Deferred()
        self._waiting.append(waiting)
        return waiting
