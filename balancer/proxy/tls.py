"""
TLS: terminating it for clients (C{[servers.X.tls]}, C{protocol = "tls"}) and
speaking it to backends (C{[servers.X.backends_tls]}).

Contexts are Twisted's C{CertificateOptions}; backends are verified with
C{service_identity} through C{optionsForClientTLS}.  The settings follow
gobetween (Go's C{crypto/tls}):

  - C{min_version}/C{max_version}: C{"tls1"} (or C{"tls1.0"}), C{"tls1.1"},
    C{"tls1.2"}, C{"tls1.3"}; unset, the minimum is TLS 1.2 (Go's and
    Twisted's default) and the maximum the newest.  C{"ssl3"} is refused:
    Go no longer speaks it and OpenSSL cannot.  OpenSSL 3 allows TLS 1.0 and
    1.1 only at its security level 0, so a context that allows them is put at
    that level (as an operator who allows them asks for).
  - C{ciphers}: TLS 1.2-and-older suites by Go's names
    (C{TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}) or OpenSSL's
    (C{ECDHE-RSA-AES128-GCM-SHA256}), in order of preference; empty means
    Twisted's secure default.  An unknown name is an error (gobetween skips
    it silently).  TLS 1.3 suites are not configurable, as in Go.
  - C{prefer_server_ciphers}: the server's order always wins, as in Go since
    1.17, which ignores the setting; it is accepted for compatibility.
  - C{session_tickets}: session tickets on (the default) or off.

A server with C{acme_hosts} gets its certificate by the server name the
client sends (L{ServerCertificates}, filled by L{balancer.acme}): OpenSSL's
servername callback switches the connection to that certificate's context,
and its ALPN callback to the TLS-ALPN-01 challenge certificate for a CA
validating the name.

Problems an operator can cause raise L{TLSError}, which names the dotted key;
L{check_tls_files} collects them for the config loader.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence

import attrs
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IAcceptableCiphers,
    ICipher,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from balancer.config.schema import BackendsTlsConfig, ServerConfig, TlsConfig
from balancer.tlsfiles import CertifiedKey, TLSError, TLSErrors, load_certified_key, load_trust_root

TLSVersion = ssl.TLSVersion

VERSIONS = {
    "tls1": TLSVersion.TLSv1_0,
    "tls1.0": TLSVersion.TLSv1_0,
    "tls1.1": TLSVersion.TLSv1_1,
    "tls1.2": TLSVersion.TLSv1_2,
    "tls1.3": TLSVersion.TLSv1_3,
}
"""C{min_version}/C{max_version} values and the TLS versions they name."""

GO_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
"""Go's C{crypto/tls} cipher suite names and OpenSSL's names for the same suites."""

_GO_TLS13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_GO_GONE = ("RC4", "3DES")


# Versions


def _version(value: str, key: str) -> ssl.TLSVersion | None:
    """The L{TLSVersion} of a C{min_version}/C{max_version} value (C{None} when unset)."""
    if not value:
        return None
    if value == "ssl3":
        raise TLSError(key, 'SSL 3.0 is insecure and not supported; use "tls1.2" or later')
    try:
        return VERSIONS[value]
    except KeyError:
        raise TLSError(key, f'expected one of {", ".join(VERSIONS)}, got "{value}"') from None


def _versions(minimum: str, maximum: str, section: str) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    low = _version(minimum, f"{section}.min_version")
    high = _version(maximum, f"{section}.max_version")
    if low is not None and high is not None and low > high:
        raise TLSError(f"{section}.min_version", f'"{minimum}" is above max_version "{maximum}"')
    return low, high


def _allows_legacy(low: ssl.TLSVersion | None, high: ssl.TLSVersion | None) -> bool:
    """Whether TLS 1.0 or 1.1 may be negotiated (Twisted lowers the minimum to a lower maximum)."""
    lowest = low if low is not None else min(TLSVersion.TLSv1_2, high or TLSVersion.TLSv1_2)
    return lowest < TLSVersion.TLSv1_2


# Ciphers


@lru_cache(maxsize=1)
def _openssl_ciphers() -> frozenset[str]:
    """Every TLS 1.2-and-older cipher suite name this OpenSSL knows."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_cipher_list(b"ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return frozenset(SSL.Connection(context, None).get_cipher_list()) - set(_GO_TLS13)


def _cipher_names(ciphers: Sequence[str], section: str) -> tuple[str, ...]:
    """OpenSSL's names for the configured suites, in order."""
    known = _openssl_ciphers()
    names = []
    for i, name in enumerate(ciphers):
        key = f"{section}.ciphers[{i}]"
        openssl_name = GO_CIPHERS.get(name, name)
        if openssl_name in known:
            names.append(openssl_name)
        elif name in _GO_TLS13:
            raise TLSError(key, f'"{name}" is a TLS 1.3 suite; those are not configurable (as in Go), remove it')
        elif any(word in name for word in _GO_GONE):
            raise TLSError(key, f'"{name}" is a broken cipher suite this OpenSSL no longer offers')
        else:
            raise TLSError(
                key,
                f'unknown cipher suite "{name}" (use Go names like TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 '
                "or OpenSSL names like ECDHE-RSA-AES128-GCM-SHA256)",
            )
    return tuple(names)


@implementer(ICipher)
@attrs.frozen
class _Cipher:
    fullName: str


@implementer(IAcceptableCiphers)
class _Ciphers:
    """
    The configured suites (or OpenSSL's DEFAULT list), plus OpenSSL security
    level 0 when TLS 1.0/1.1 are allowed, without which OpenSSL 3 refuses them.
    """

    def __init__(self, names: tuple[str, ...], legacy: bool) -> None:
        self._names = names
        self._legacy = legacy

    # Twisted annotates both as tuple[ICipher] where it means a tuple of any length.
    def selectCiphers(self, availableCiphers: tuple[ICipher, ...]) -> tuple[ICipher, ...]:  # type: ignore[override]
        """The configured suites in order; OpenSSL's DEFAULT list without any."""
        if self._names:
            chosen: list[ICipher] = [_Cipher(name) for name in self._names]
        else:
            chosen = list(ssl.AcceptableCiphers.fromOpenSSLCipherString("DEFAULT").selectCiphers(availableCiphers))
        if self._legacy:
            chosen.append(_Cipher("@SECLEVEL=0"))
        return tuple(chosen)


def _acceptable_ciphers(
    ciphers: Sequence[str], low: ssl.TLSVersion | None, high: ssl.TLSVersion | None, section: str
) -> IAcceptableCiphers | None:
    names = _cipher_names(ciphers, section)
    legacy = _allows_legacy(low, high)
    return _Ciphers(names, legacy) if names or legacy else None


# Contexts


class ServerCertificates(Protocol):
    """
    Certificates chosen by the server name a client sends (SNI), beside or
    instead of C{[tls]}'s files: those of C{acme_hosts} (L{balancer.acme}).
    """

    def certificate(self, hostname: str) -> CertifiedKey | None:
        """The certificate for C{hostname} now, if there is one."""

    def challenge(self, hostname: str) -> CertifiedKey | None:
        """The TLS-ALPN-01 challenge certificate for C{hostname}, while one is answered."""

    def missing(self, hostname: str) -> None:
        """Told when a client asked for C{hostname} and got no certificate of these."""


#: The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
ACME_TLS_ALPN = b"acme-tls/1"


def server_context(
    config: TlsConfig, certificates: ServerCertificates | None = None
) -> IOpenSSLServerConnectionCreator:
    """
    What a listener terminating TLS per C{config} needs (for C{listenSSL},
    C{TLSMemoryBIOFactory} or C{SSL4ServerEndpoint}).

    @param certificates: when given, a client whose server name has one of
        these gets it (with C{config}'s other settings); other clients get
        C{cert_path}'s, or no handshake when there is none.
    @raise TLSError: on a version, cipher, certificate or key that cannot be used.
    """
    low, high = _versions(config.min_version, config.max_version, "tls")
    ciphers = _acceptable_ciphers(config.ciphers, low, high, "tls")

    def make(pair: CertifiedKey | None) -> Any:
        files: dict[str, Any] = {}
        if pair is not None:
            files = {"privateKey": pair.key, "certificate": pair.certificate, "extraCertChain": list(pair.chain)}
        built = _build(
            lambda **options: ssl.CertificateOptions(
                enableSessionTickets=config.session_tickets, **files, **options
            ),
            low,
            high,
            ciphers,
            "tls",
        )
        # The end of a client's TCP stream without close_notify ends its input, on either
        # data path (every context, the per-name ones too): OpenSSL holds it for a fatal
        # error otherwise, a reset to the relay, and nothing more could be sent to the client.
        built.getContext().set_options(SSL.OP_IGNORE_UNEXPECTED_EOF)
        return built

    default = load_certified_key(config.cert_path, config.key_path, "tls.") if config.cert_path else None
    if certificates is None:
        return make(default)
    return _ByServerName(make, default, certificates)


@implementer(IOpenSSLServerConnectionCreator)
class _ByServerName:
    """
    Connections that switch to the context of the certificate their client's
    server name has (OpenSSL's servername callback), and to a TLS-ALPN-01
    challenge certificate when the client offers only C{acme-tls/1} for a
    name being validated.  Each context is built once per certificate (again
    for a renewed one), not per connection.
    """

    def __init__(
        self, make: Callable[[CertifiedKey | None], Any], default: CertifiedKey | None, certificates: ServerCertificates
    ) -> None:
        self._make = make
        self._certificates = certificates
        self._contexts: dict[str, tuple[CertifiedKey, SSL.Context]] = {}
        self._challenges: dict[str, tuple[CertifiedKey, SSL.Context]] = {}
        self._default = self._context(default)

    def _context(self, pair: CertifiedKey | None) -> SSL.Context:
        context: SSL.Context = self._make(pair).getContext()
        context.set_tlsext_servername_callback(self._chose_name)
        context.set_alpn_select_callback(self._chose_protocol)
        return context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A connection that starts with the default context."""
        return SSL.Connection(self._default, None)

    def getContext(self) -> SSL.Context:
        """The context a connection starts with (its callbacks switch it by server name)."""
        return self._default

    def _chose_name(self, connection: SSL.Connection) -> None:
        name = _server_name(connection)
        if name is None:
            return
        pair = self._certificates.certificate(name)
        if pair is None:
            if self._certificates.challenge(name) is None:
                self._certificates.missing(name)
            return
        cached = self._contexts.get(name)
        if cached is None or cached[0] is not pair:
            cached = self._contexts[name] = (pair, self._context(pair))
        connection.set_context(cached[1])

    def _chose_protocol(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        name = _server_name(connection)
        if ACME_TLS_ALPN in offered and name is not None:
            challenge = self._certificates.challenge(name)
            if challenge is not None:
                cached = self._challenges.get(name)
                if cached is None or cached[0] is not challenge:
                    cached = self._challenges[name] = (challenge, self._make(challenge).getContext())
                connection.set_context(cached[1])
                return ACME_TLS_ALPN
        return SSL.NO_OVERLAPPING_PROTOCOLS


def _server_name(connection: SSL.Connection) -> str | None:
    """The lower-case server name the client sent, if any."""
    sent = connection.get_servername()
    return sent.decode("ascii", "replace").lower().rstrip(".") if sent else None


class BackendTLS:
    """
    A server's C{[backends_tls]}, loaded once (files read, settings
    checked): L{creator} gives what a connection to one backend host needs.

    @raise TLSError: on a version, cipher, certificate or key that cannot be used.
    """

    def __init__(self, config: BackendsTlsConfig) -> None:
        self._low, self._high = _versions(config.min_version, config.max_version, "backends_tls")
        self._ciphers = _acceptable_ciphers(config.ciphers, self._low, self._high, "backends_tls")
        # CertificateOptions' keyword arguments, each of its own type.
        extra: dict[str, Any] = {"enableSessionTickets": config.session_tickets}
        if config.cert_path is not None and config.key_path is not None:
            pair = load_certified_key(config.cert_path, config.key_path, "backends_tls.")
            extra.update(privateKey=pair.key, certificate=pair.certificate, extraCertChain=list(pair.chain))
        self._extra = extra
        self._unverified: Any = None
        self._trust: Any = None
        if config.ignore_verify:
            self._unverified = self._make(lambda **more: ssl.CertificateOptions(**extra, **more))
        else:
            self._trust = _trust_root(config.root_ca_cert_path)
        self.creator: Callable[[str], ResumingCreator] = lru_cache(maxsize=256)(self._creator)

    def _make(self, make: Callable[..., object]) -> Any:
        return _build(make, self._low, self._high, self._ciphers, "backends_tls")

    def _creator(self, hostname: str) -> ResumingCreator:
        """
        The creator for backend host C{hostname} (kept per host, so each has
        one OpenSSL context and resumes the host's last session): it
        verifies that the certificate chains to C{root_ca_cert_path} (or the
        system's trust store) and names C{hostname}, unless C{ignore_verify}.
        """
        if self._unverified is not None:
            return ResumingCreator(_Unverified(self._unverified, hostname))
        trust, extra = self._trust, self._extra

        def make(**more: object) -> IOpenSSLClientConnectionCreator:
            return ssl.optionsForClientTLS(hostname, trust, extraCertificateOptions={**extra, **more})

        return ResumingCreator(self._make(make))


def backend_context(config: BackendsTlsConfig, hostname: str) -> ResumingCreator:
    """
    What a connection to a backend speaking TLS per C{config} needs (for
    C{connectSSL} or C{wrapClientTLS}).

    The backend's certificate must chain to C{root_ca_cert_path} (or to the
    system's trust store when unset) and name C{hostname} (a DNS name or an
    IP address), unless C{ignore_verify}.  C{hostname} is also sent as SNI
    when it is a DNS name, as Go does.

    @param hostname: the backend's host as configured.
    @raise TLSError: on a version, cipher, certificate or key that cannot be used.
    """
    return BackendTLS(config).creator(hostname)


def _build(
    make: Callable[..., object],
    low: ssl.TLSVersion | None,
    high: ssl.TLSVersion | None,
    ciphers: IAcceptableCiphers | None,
    section: str,
) -> Any:
    """Call C{make} with the version and cipher options that are set."""
    options: dict[str, object] = {}
    if low is not None:
        options["insecurelyLowerMinimumTo"] = low
    if high is not None:
        options["lowerMaximumSecurityTo"] = high
    if ciphers is not None:
        options["acceptableCiphers"] = ciphers
    try:
        return make(**options)
    except ValueError as e:
        raise TLSError(f"{section}.ciphers", str(e)) from None


def _trust_root(path: str | None) -> Any:
    if path is None:
        return ssl.platformTrust()
    return load_trust_root(path, "backends_tls.root_ca_cert_path")


@implementer(IOpenSSLClientConnectionCreator)
class ResumingCreator:
    """
    Connections to one backend host that offer the last TLS session it
    gave (L{remember}ed), so that a new connection resumes it (an
    abbreviated handshake) instead of a full one; a backend that does not
    resume it answers with a full handshake, as to any new client.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator
        self._session: SSL.Session | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A connection to the host, offering its last session."""
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        if self._session is not None:
            connection.set_session(self._session)
        return connection

    def remember(self, connection: SSL.Connection) -> None:
        """
        Offer C{connection}'s session from now on: called once its handshake
        is done, and again when it ends (a TLS 1.3 server sends its session
        tickets after the handshake).
        """
        session = connection.get_session()
        if session is not None:
            self._session = session


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """A client creator that does not verify the server, but sends SNI for a DNS name."""

    def __init__(self, options: object, hostname: str) -> None:
        self._options = options
        self._server_name = None if isIPAddress(hostname) or isIPv6Address(hostname) else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection: SSL.Connection = self._options.clientConnectionForTLS(tlsProtocol)  # type: ignore[attr-defined]
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


# Load-time checks


def check_tls_files(config: ServerConfig) -> list[tuple[str, str]]:
    """
    Everything in a server's C{[tls]} and C{[backends_tls]} that
    L{server_context} or L{backend_context} would refuse: unreadable or
    invalid certificate and key files, a key that is not the certificate's,
    an unreadable root CA file, C{ssl3}, a minimum above the maximum, unknown
    cipher names.

    @return: C{(dotted key, message)} for each problem, for the loader to
        report with the other configuration errors; empty when all is well.
    """
    problems: list[tuple[str, str]] = []

    def attempt(check: Callable[[], object]) -> None:
        try:
            check()
        except TLSErrors as e:
            problems.extend((p.key, p.message) for p in e.problems)
        except TLSError as e:
            problems.append((e.key, e.message))

    tls = config.tls
    if tls is not None:
        attempt(lambda: _versions(tls.min_version, tls.max_version, "tls"))
        attempt(lambda: _cipher_names(tls.ciphers, "tls"))
        if tls.cert_path and tls.key_path:
            attempt(lambda: load_certified_key(tls.cert_path, tls.key_path, "tls."))
    backends = config.backends_tls
    if backends is not None:
        attempt(lambda: _versions(backends.min_version, backends.max_version, "backends_tls"))
        attempt(lambda: _cipher_names(backends.ciphers, "backends_tls"))
        if backends.cert_path is not None and backends.key_path is not None:
            cert_path, key_path = backends.cert_path, backends.key_path
            attempt(lambda: load_certified_key(cert_path, key_path, "backends_tls."))
        if backends.root_ca_cert_path is not None:
            root = backends.root_ca_cert_path
            attempt(lambda: load_trust_root(root, "backends_tls.root_ca_cert_path"))
    return problems
