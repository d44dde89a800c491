"""
L{AcmeCertificates}: what the TLS listeners of C{acme_hosts} serve, by
server name, and the HTTP-01 answers of the C{http_bind} listener.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.logger import Logger

from balancer.acme.cache import Issued
from balancer.tlsfiles import CertifiedKey

log = Logger()


class AcmeCertificates:
    """
    The certificates issued so far by host name, and the challenges being
    answered (HTTP-01 key authorizations by token, TLS-ALPN-01 certificates by
    host); a L{balancer.proxy.tls.ServerCertificates}.

    A client asking for a host without a certificate is refused; that is
    logged once per host until it has one.

    @ivar challenge_kind: C{[acme] challenge}.
    @ivar wanted: told the C{acme_hosts} of each TLS listener made.
    """

    def __init__(self, challenge_kind: str = "http") -> None:
        self.challenge_kind = challenge_kind
        self._issued: dict[str, Issued] = {}
        self._tokens: dict[str, str] = {}
        self._challenges: dict[str, CertifiedKey] = {}
        self._told: set[str] = set()
        self.wanted: Callable[[Iterable[str]], None] = lambda hostnames: None

    def only(self, hostnames: Iterable[str]) -> HostCertificates:
        """
        What a server whose C{acme_hosts} are C{hostnames} serves; L{wanted}
        is told them (worker 0's L{AcmeService<balancer.acme.service.AcmeService>}
        orders those it does not know yet: servers added or changed at runtime).
        """
        names = [h.lower() for h in hostnames]
        self.wanted(names)
        return HostCertificates(self, names)

    def put(self, hostname: str, issued: Issued) -> None:
        """Serve C{issued} for C{hostname} from now on (new handshakes)."""
        self._issued[hostname] = issued
        self._told.discard(hostname)

    def issued(self, hostname: str) -> Issued | None:
        """C{hostname}'s certificate, if it has one."""
        return self._issued.get(hostname)

    def certificate(self, hostname: str) -> CertifiedKey | None:
        """C{hostname}'s certificate, for a handshake."""
        issued = self._issued.get(hostname)
        return issued.pair if issued is not None else None

    def missing(self, hostname: str) -> None:
        """Log, once per host until it has a certificate, that a client was refused for lack of one."""
        if hostname in self._told:
            return
        self._told.add(hostname)
        log.warn("acme: no certificate for {hostname} yet; refusing TLS handshakes for it", hostname=hostname)

    def answer_http(self, token: str, key_authorization: str | None) -> None:
        """Answer HTTP-01 for C{token} with C{key_authorization}, or stop answering (C{None})."""
        if key_authorization is None:
            self._tokens.pop(token, None)
        else:
            self._tokens[token] = key_authorization

    def http_answer(self, token: str) -> str | None:
        """The key authorization to answer for C{token}, while it is being validated."""
        return self._tokens.get(token)

    def answer_tls(self, hostname: str, certificate: CertifiedKey | None) -> None:
        """Answer TLS-ALPN-01 for C{hostname} with C{certificate}, or stop answering (C{None})."""
        if certificate is None:
            self._challenges.pop(hostname, None)
        else:
            self._challenges[hostname] = certificate

    def challenge(self, hostname: str) -> CertifiedKey | None:
        """C{hostname}'s TLS-ALPN-01 certificate, while it is being validated."""
        return self._challenges.get(hostname)


class HostCertificates:
    """The part of L{AcmeCertificates} one server serves: its own C{acme_hosts}."""

    def __init__(self, certificates: AcmeCertificates, hostnames: Iterable[str]) -> None:
        self._certificates = certificates
        self._hostnames = frozenset(h.lower() for h in hostnames)

    def certificate(self, hostname: str) -> CertifiedKey | None:
        """C{hostname}'s certificate, if it is one of this server's hosts and has one."""
        return self._certificates.certificate(hostname) if hostname in self._hostnames else None

    def challenge(self, hostname: str) -> CertifiedKey | None:
        """C{hostname}'s TLS-ALPN-01 certificate, if it is one of this server's hosts being validated."""
        return self._certificates.challenge(hostname) if hostname in self._hostnames else None

    def missing(self, hostname: str) -> None:
        """Log a refusal for one of this server's hosts (once); other names are not ours to tell."""
        if hostname in self._hostnames:
            self._certificates.missing(hostname)
