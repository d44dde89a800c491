"""
L{AcmeService}: orders a certificate for every C{acme_hosts} name that
has none in C{cache_dir} (or whose cached one is due for renewal), renews
each well before it expires, and retries failed orders with backoff.

It runs in worker 0 only; the other workers read what it writes in
C{cache_dir} when told (L{load_cached}), and answer TLS-ALPN-01 with the
certificates it sends them (L{answer_tls}), since the CA's connection may
reach any of them.  New handshakes get a renewed
certificate at once; the listeners are never closed for it.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.acme import ordering
from balancer.acme.cache import CacheError, CertificateCache, Issued, parse
from balancer.acme.certificates import AcmeCertificates
from balancer.config.schema import AcmeConfig, Config
from balancer.tlsfiles import CertifiedKey

log = Logger()

#: Seconds before the first retry of a failed order; doubled after each failure.
RETRY_FIRST = 2.0
#: The longest wait between two attempts (Let's Encrypt allows 5 failed validations an hour).
RETRY_MAX = 3600.0
#: A certificate is renewed this long before it expires, or at two thirds of its life if that is sooner.
RENEW_BEFORE = datetime.timedelta(days=30)


def acme_hosts(config: Config) -> list[str]:
    """Every C{acme_hosts} name of C{config}'s TLS servers, once each, in order."""
    names: dict[str, None] = {}
    for server in config.servers.values():
        if server.protocol == "tls" and server.tls is not None:
            names.update(dict.fromkeys(h.lower() for h in server.tls.acme_hosts))
    return list(names)


def renewal_time(issued: Issued) -> datetime.datetime:
    """When C{issued} is renewed: L{RENEW_BEFORE} before it expires, or at two thirds of its life if sooner."""
    life = issued.not_after - issued.not_before
    return issued.not_after - min(RENEW_BEFORE, life / 3)


def load_cached(certificates: AcmeCertificates, cache: CertificateCache, hostnames: Iterable[str]) -> None:
    """Serve the cached certificate of each of C{hostnames} that has a usable one."""
    for hostname in hostnames:
        try:
            issued = cache.load(hostname)
        except CacheError as e:
            log.warn("acme: {hostname}: {problem}", hostname=hostname, problem=str(e))
            continue
        if issued is not None:
            certificates.put(hostname, issued)
            log.info("acme: serving the certificate for {hostname} from {path}", hostname=hostname, path=cache.path(hostname))


def now_utc(reactor: Any) -> datetime.datetime:
    """The reactor's time as an aware UTC datetime."""
    return datetime.datetime.fromtimestamp(reactor.seconds(), datetime.timezone.utc)


class AcmeService(Service):
    """
    Keeps a certificate for each host of C{hosts} in C{certificates}.

    @param order: L{balancer.acme.ordering.order}, or a fake.
    @param in_thread: runs a blocking call off the reactor (C{deferToThread}).
    @param from_thread: runs a call in the reactor from that thread and waits
        for it (C{blockingCallFromThread}).
    @param issued: told each host name once its new certificate is in C{cache_dir}.
    @param challenged: told each host name and its TLS-ALPN-01 certificate
        (key and certificate in PEM) when it is answered, and C{None} when it
        is withdrawn, for the other workers to answer too; the CA is told to
        validate once what it returns has fired (every worker answers).
    """

    def __init__(
        self,
        config: AcmeConfig,
        hosts: Iterable[str],
        certificates: AcmeCertificates,
        reactor: Any,
        *,
        order: Callable[..., bytes] = ordering.order,
        in_thread: Callable[..., Deferred[Any]] = deferToThread,
        from_thread: Callable[..., Any] | None = None,
        issued: Callable[[str], None] = lambda hostname: None,
        challenged: Callable[[str, bytes | None], Deferred[Any]] = lambda hostname, pem: succeed(None),
    ) -> None:
        self._config = config
        self._hosts = list(hosts)
        self._certificates = certificates
        self._reactor = reactor
        self._cache = CertificateCache(config.cache_dir)
        self._directory = ordering.Directory(config.directory_url, config.directory_ca_cert_path)
        self._order = order
        self._in_thread = in_thread
        self._from_thread = from_thread or (lambda f, *a: blockingCallFromThread(reactor, f, *a))
        self._issued = issued
        self._challenged = challenged
        self._failures: dict[str, int] = {}
        self._calls: dict[str, IDelayedCall] = {}
        self._account: bytes | None = None

    def startService(self) -> None:
        """Serve what is cached, and order (now, or when due) for every host, and for those listeners want later."""
        super().startService()
        hosts, self._hosts = self._hosts, []
        self._certificates.wanted = self.want
        self.want(hosts)

    def want(self, hostnames: Iterable[str]) -> None:
        """Keep a certificate for each of C{hostnames} not kept yet: the cached one, or one ordered now."""
        new = [h for h in hostnames if h not in self._hosts]
        self._hosts += new
        load_cached(self._certificates, self._cache, new)
        for hostname in new:
            issued = self._certificates.issued(hostname)
            if issued is None:
                self._start_order(hostname)
            else:
                self._renew_when_due(hostname, issued)

    def stopService(self) -> None:
        """Cancel the orders planned; one under way finishes unheeded."""
        super().stopService()
        self._certificates.wanted = lambda hostnames: None
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if call.active():
                call.cancel()

    def _renew_when_due(self, hostname: str, issued: Issued) -> None:
        due = renewal_time(issued)
        delay = max(0.0, (due - now_utc(self._reactor)).total_seconds())
        log.info(
            "acme: certificate for {hostname} valid until {until}; renewal at {due}",
            hostname=hostname, until=issued.not_after.isoformat(), due=due.isoformat(),
        )
        self._later(hostname, delay)

    def _later(self, hostname: str, delay: float) -> None:
        self._calls[hostname] = self._reactor.callLater(delay, self._start_order, hostname)

    def _start_order(self, hostname: str) -> None:
        self._calls.pop(hostname, None)
        if not self.running:
            return
        log.info("acme: ordering a certificate for {hostname} from {url}", hostname=hostname, url=self._directory.url)
        try:
            if self._account is None:
                self._account = self._cache.account_key()
        except OSError as e:
            self._failed(hostname, f"cannot keep the account key in {self._cache.directory}: {e.strerror}")
            return
        done = self._in_thread(
            self._order,
            self._directory,
            self._account,
            hostname,
            self._config.challenge,
            lambda challenge, validation: self._from_thread(self._answer, hostname, challenge, validation),
            lambda challenge: self._from_thread(self._withdraw, hostname, challenge),
        )
        done.addCallback(self._got, hostname)
        done.addErrback(self._not_got, hostname)

    def _answer(self, hostname: str, challenge: Any, validation: str) -> Deferred[Any]:
        """Answer C{challenge} here (and, for TLS-ALPN-01, in every worker); the order thread waits for it."""
        if isinstance(challenge, ordering.TLSALPN01):
            pem = ordering.alpn_certificate(hostname, validation)
            self._certificates.answer_tls(hostname, _pair(pem))
            return self._challenged(hostname, pem)
        self._certificates.answer_http(challenge.encode("token"), validation)
        return succeed(None)

    def _withdraw(self, hostname: str, challenge: Any) -> None:
        if isinstance(challenge, ordering.TLSALPN01):
            self._certificates.answer_tls(hostname, None)
            self._challenged(hostname, None)
        else:
            self._certificates.answer_http(challenge.encode("token"), None)

    def _got(self, pem: bytes, hostname: str) -> None:
        try:
            issued = parse(pem, f"the CA's answer for {hostname}")
            self._cache.store(hostname, pem)
        except (CacheError, OSError) as e:
            self._failed(hostname, str(e))
            return
        self._failures.pop(hostname, None)
        self._certificates.put(hostname, issued)
        self._issued(hostname)
        if self.running:
            self._renew_when_due(hostname, issued)

    def _not_got(self, failure: Failure, hostname: str) -> None:
        if failure.check(ordering.OrderError):
            self._failed(hostname, str(failure.value))
        else:
            log.failure("acme: ordering a certificate for {hostname} failed", failure, hostname=hostname)
            self._failed(hostname, repr(failure.value))

    def _failed(self, hostname: str, why: str) -> None:
        failures = self._failures[hostname] = self._failures.get(hostname, 0) + 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1))
        log.warn(
            "acme: no certificate for {hostname}: {why}; next attempt in {delay:g} s",
            hostname=hostname, why=why, delay=delay,
        )
        if self.running:
            self._later(hostname, delay)


def _pair(pem: bytes) -> CertifiedKey:
    return parse(pem, "a TLS-ALPN-01 certificate").pair


def answer_tls(certificates: AcmeCertificates, hostname: str, pem: bytes | None) -> None:
    """Answer (or stop answering, with C{None}) TLS-ALPN-01 for C{hostname} with worker 0's certificate C{pem}."""
    certificates.answer_tls(hostname, None if pem is None else _pair(pem))
