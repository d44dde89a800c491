"""
A DNS zone for twisted.names' server classes (C{server.DNSServerFactory}
with C{clients=[Records(...)]}): SRV, A and AAAA records by name, with the
SRV targets' addresses in the additional section if asked, recording each
question.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import common, dns


class Records(common.ResolverBase):
    """
    A zone of records (SRV, A, AAAA) by name; other names do not exist
    (NXDOMAIN).  With C{additional}, SRV answers carry the A and AAAA
    records of their targets in the additional section, as authoritative
    servers do.  C{asked} lists each question (name, type) received.
    """

    def __init__(
        self, records: dict[str, list[Any]], additional: bool = False, failing: frozenset[tuple[str, int]] = frozenset()
    ) -> None:
        """@param failing: the questions (name, type) answered SERVFAIL."""
        super().__init__()
        self.records = {name.encode(): payloads for name, payloads in records.items()}
        self.additional = additional
        self.failing = failing
        self.asked: list[tuple[str, int]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        self.asked.append((name.decode(), type))
        if (name.decode(), type) in self.failing:
            return fail(RuntimeError("this zone's server fails on purpose"))
        if name not in self.records:
            return fail(dns.DomainError(name))
        payloads = [r for r in self.records[name] if r.TYPE == type]
        answers = [dns.RRHeader(name, r.TYPE, payload=r, auth=True) for r in payloads]
        extra = []
        if self.additional:
            for srv in payloads:
                if isinstance(srv, dns.Record_SRV):
                    target = srv.target.name
                    extra += [
                        dns.RRHeader(target, r.TYPE, payload=r, auth=True)
                        for r in self.records.get(target, [])
                        if r.TYPE in (dns.A, dns.AAAA)
                    ]
        return succeed((answers, [], extra))
