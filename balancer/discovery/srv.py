"""
C{kind = "srv"}: the SRV records of a DNS name, asked of one DNS server.

One query for C{srv_lookup_pattern} of type SRV goes to C{srv_lookup_server}
(C{"host:port"}) over C{srv_dns_protocol} (C{udp} or C{tcp}; a truncated UDP
answer is asked again over TCP).  Each SRV record is a backend: its target
name (without the final dot) as host and sni, its port, its weight and
priority.  Nothing else is resolved: the balancer resolves the target when
it connects.  A record whose target is C{"."} ("no service here") is left
out; a name that does not exist (NXDOMAIN) or has no SRV records gives no
backends.  Any other error code, a malformed answer or no answer fails the
fetch.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import ITCPTransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.config.addresses import BackendSpec, split_host_port
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend

_RCODES = {dns.EFORMAT: "FORMERR", dns.ESERVER: "SERVFAIL", dns.ENOTIMP: "NOTIMP", dns.EREFUSED: "REFUSED"}


def _query(name: str) -> dns.Message:
    message = dns.Message(id=secrets.randbelow(65536), recDes=1)
    message.queries = [dns.Query(name, dns.SRV, dns.IN)]
    return message


def _parse(data: bytes) -> dns.Message:
    message = dns.Message()
    try:
        message.fromStr(data)
    except Exception as e:
        raise DiscoveryError(f"malformed DNS answer: {e!r}") from None
    return message


class _UDPQuery(DatagramProtocol):
    """
    Sends one query from its own port and fires C{done} with the answer of
    the same id (a bare truncated message when its TC bit is set).
    """

    transport: IUDPTransport  # set by listenUDP, before the query is sent

    def __init__(self, query: dns.Message, server: tuple[str, int], done: Deferred[dns.Message]) -> None:
        self._query = query
        self._server = server
        self._done = done

    def startProtocol(self) -> None:
        self.transport.connect(*self._server)
        self.transport.write(self._query.toStr(), None)

    def datagramReceived(self, data: bytes, address: tuple[str, int]) -> None:
        header_ok = len(data) >= 12 and data[:2] == self._query.id.to_bytes(2, "big") and data[2] & 0x80
        if self._done.called or not header_ok:
            return
        if data[2] & 0x02:
            self._done.callback(dns.Message(id=self._query.id, answer=1, trunc=1))
            return
        try:
            self._done.callback(_parse(data))
        except DiscoveryError as e:
            self._done.errback(e)

    def connectionRefused(self) -> None:
        self._refused()

    def stopProtocol(self) -> None:
        # The reactor closes the port on a socket error (the ICMP "port
        # unreachable" of a refused query) without calling connectionRefused.
        self._refused()

    def _refused(self) -> None:
        if not self._done.called:
            host, port = self._server
            self._done.errback(DiscoveryError(f"{host}:{port} (udp) refused the query (nothing listens there?)"))


class _TCPQuery(Int16StringReceiver):
    """Sends one length-prefixed query and fires C{done} with the first answer."""

    transport: ITCPTransport  # set on connection, before the query is sent

    def __init__(self, query: dns.Message, done: Deferred[dns.Message]) -> None:
        self._query = query
        self._done = done

    def connectionMade(self) -> None:
        self.sendString(self._query.toStr())

    def stringReceived(self, data: bytes) -> None:
        self.transport.loseConnection()
        if self._done.called:
            return
        try:
            answer = _parse(data)
        except DiscoveryError as e:
            self._done.errback(e)
            return
        if answer.id != self._query.id:
            self._done.errback(DiscoveryError(f"the DNS server answered query {answer.id}, not {self._query.id}"))
            return
        self._done.callback(answer)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self._done.called:
            self._done.errback(DiscoveryError("the DNS server closed the connection without answering"))


def srv_backends(answer: dns.Message) -> list[BackendSpec]:
    """
    The backends in the SRV records of C{answer}.

    @raise DiscoveryError: when the server answered an error other than NXDOMAIN.
    """
    if answer.rCode == dns.ENAME:
        return []
    if answer.rCode != dns.OK:
        raise DiscoveryError(f"the DNS server answered {_RCODES.get(answer.rCode, answer.rCode)}")
    backends: list[BackendSpec] = []
    for record in answer.answers:
        srv = record.payload
        if not isinstance(srv, dns.Record_SRV):
            continue
        target = srv.target.name.decode("ascii").rstrip(".")
        if not target:
            continue
        try:
            backends.append(make_backend(target, srv.port, srv.weight, srv.priority, sni=target))
        except DiscoveryError as e:
            raise DiscoveryError(f"SRV record {record.name}: {e}") from None
    return backends


@implementer(IDiscovery)
class SrvDiscovery:
    """Asks C{srv_lookup_server} for the SRV records of C{srv_lookup_pattern}."""

    DEFAULT_TIMEOUT = 5.0

    def __init__(self, config: DiscoveryConfig, reactor: Any) -> None:
        server = split_host_port(config.srv_lookup_server, allow_port_zero=False)
        self._host, self._port = server.host, server.port
        self._name = config.srv_lookup_pattern
        self._protocol = config.srv_dns_protocol
        self._reactor = reactor

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """Query once (over TCP again if the UDP answer was truncated)."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        query = _query(self._name)
        if self._protocol == "udp":
            answer = await self._over_udp(query)
            if answer.trunc:
                answer = await self._over_tcp(query)
        else:
            answer = await self._over_tcp(query)
        return srv_backends(answer)

    async def _over_udp(self, query: dns.Message) -> dns.Message:
        host = self._host
        if not _is_ip(host):
            host = await self._reactor.resolve(host)
        done: Deferred[dns.Message] = Deferred()
        interface = "::" if ":" in host else ""
        port = self._reactor.listenUDP(0, _UDPQuery(query, (host, self._port), done), interface=interface)
        try:
            return await done
        finally:
            port.stopListening()

    async def _over_tcp(self, query: dns.Message) -> dns.Message:
        done: Deferred[dns.Message] = Deferred()
        protocol = _TCPQuery(query, done)
        await connectProtocol(HostnameEndpoint(self._reactor, self._host, self._port), protocol)
        try:
            return await done
        finally:
            protocol.transport.abortConnection()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
