"""Raw HTTP bytes to a site in process: one connection from 127.0.0.1 on a C{StringTransport}."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


def exchange(site: Any, data: bytes) -> bytes:
    """Send C{data} on a new connection from 127.0.0.1 to C{site}; what it answered."""
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 8888))
    channel.makeConnection(transport)
    channel.dataReceived(data)
    answer = transport.value()
    if not transport.disconnecting:
        channel.connectionLost(Failure(ConnectionDone()))
    return answer
