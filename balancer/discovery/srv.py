"""
C{kind = "srv"}: the SRV records of a DNS name, asked of one DNS server.

One query for C{srv_lookup_pattern} of type SRV goes to C{srv_lookup_server}
(C{"host:port"}) over C{srv_dns_protocol} (C{udp} or C{tcp}; a truncated UDP
answer is asked again over TCP).  Each SRV record is a backend with the
record's port, weight and priority; as in gobetween, its host is the
target's address and its sni the target name without the final dot.

The address comes from the answer's additional section (an A record, else
an AAAA record, of the target); for a target not there the same server is
asked for its A records, then (none, or an error) its AAAA records, over the
same protocol, once per target and fetch.  A target with no address is left
out with a warning.  A record whose target is C{"."} ("no service here") is
left out; a name that does not exist (NXDOMAIN) or has no SRV records gives
no backends.  Any other error code of the SRV query, a malformed answer or
no answer fails the fetch.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import ITCPTransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.config.addresses import BackendSpec, split_host_port
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend

_log = Logger()

_RCODES = {dns.EFORMAT: "FORMERR", dns.ESERVER: "SERVFAIL", dns.ENOTIMP: "NOTIMP", dns.EREFUSED: "REFUSED"}


def _query(name: str, qtype: int) -> dns.Message:
    message = dns.Message(id=secrets.randbelow(65536), recDes=1)
    message.queries = [dns.Query(name, qtype, dns.IN)]
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


def _owner(name: dns.Name) -> str:
    """A name as text, without the final dot, lower case (the key of L{additional_addresses})."""
    return name.name.decode("ascii").rstrip(".").lower()


def _checked(answer: dns.Message, what: str) -> bool:
    """
    Whether C{answer} may hold records: C{False} for NXDOMAIN.

    @raise DiscoveryError: for any other error code, naming C{what} was asked.
    """
    if answer.rCode == dns.ENAME:
        return False
    if answer.rCode != dns.OK:
        raise DiscoveryError(f"the DNS server answered {_RCODES.get(answer.rCode, answer.rCode)} for {what}")
    return True


def _address_text(record: dns.Record_A | dns.Record_AAAA) -> str:
    return str(ipaddress.ip_address(record.address or b""))


def srv_targets(answer: dns.Message) -> list[str]:
    """
    The target names (without the final dot) of the SRV records in
    C{answer}, in order, each once; C{"."} targets left out.

    @raise DiscoveryError: when the server answered an error other than NXDOMAIN.
    """
    if not _checked(answer, "SRV"):
        return []
    targets: dict[str, None] = {}
    for record in answer.answers:
        if isinstance(record.payload, dns.Record_SRV) and _owner(record.payload.target):
            targets.setdefault(_owner(record.payload.target), None)
    return list(targets)


def additional_addresses(answer: dns.Message) -> dict[str, str]:
    """
    The addresses of names in the additional section of C{answer}: for
    each name (lower case, no final dot) its first A record's, else its
    first AAAA record's.
    """
    addresses: dict[str, str] = {}
    for wanted in (dns.Record_A, dns.Record_AAAA):
        for record in answer.additional:
            if isinstance(record.payload, wanted):
                addresses.setdefault(_owner(record.name), _address_text(record.payload))
    return addresses


def first_address(answer: dns.Message, what: str) -> str:
    """
    The address of the first A or AAAA record in C{answer}'s answer
    section (after any CNAME), or C{""}: none, or NXDOMAIN.

    @raise DiscoveryError: when the server answered another error.
    """
    if not _checked(answer, what):
        return ""
    for record in answer.answers:
        if isinstance(record.payload, (dns.Record_A, dns.Record_AAAA)):
            return _address_text(record.payload)
    return ""


def srv_backends(answer: dns.Message, addresses: Mapping[str, str]) -> list[BackendSpec]:
    """
    The backends in the SRV records of C{answer}: each target's address as
    host (from C{addresses}, keyed as by L{srv_targets}), the target name as
    sni.  A target without an address is left out with a warning.

    @raise DiscoveryError: when the server answered an error other than
        NXDOMAIN, or a record is not a backend (port 0).
    """
    if not _checked(answer, "SRV"):
        return []
    backends: list[BackendSpec] = []
    for record in answer.answers:
        srv = record.payload
        if not isinstance(srv, dns.Record_SRV):
            continue
        target = _owner(srv.target)
        if not target:
            continue
        address = addresses.get(target, "")
        if not address:
            _log.warn("srv target {target} has no A or AAAA record: skipped", target=target)
            continue
        try:
            backends.append(make_backend(address, srv.port, srv.weight, srv.priority, sni=target))
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
        """Ask for the SRV records, then for the addresses the answer lacks."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        answer = await self._ask(self._name, dns.SRV)
        addresses = additional_addresses(answer)
        for target in srv_targets(answer):
            if target not in addresses:
                addresses[target] = await self._address(target)
        return srv_backends(answer, addresses)

    async def _address(self, target: str) -> str:
        """The target's first A record's address, else its first AAAA record's, else C{""}."""
        for qtype, what in ((dns.A, "A"), (dns.AAAA, "AAAA")):
            what = f"{what} {target}"
            try:
                address = first_address(await self._ask(target, qtype), what)
            except (DiscoveryError, ConnectError) as e:
                _log.warn("srv: looking up {what} failed: {error}", what=what, error=str(e))
                continue
            if address:
                return address
        return ""

    async def _ask(self, name: str, qtype: int) -> dns.Message:
        """One query over C{srv_dns_protocol} (over TCP again if the UDP answer was truncated)."""
        query = _query(name, qtype)
        if self._protocol == "udp":
            answer = await self._over_udp(query)
            if answer.trunc:
                answer = await self._over_tcp(query)
        else:
            answer = await self._over_tcp(query)
        return answer

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
