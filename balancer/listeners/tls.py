"""
TLS listeners (C{protocol = "tls"}): TLS terminated with C{[tls]}; each
client is routed once its handshake is done (by the server name it sent,
with C{[sni]}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balancer.proxy.tcp import RelayFactory
from balancer.proxy.tls import ServerCertificates, server_context
from balancer.proxy.tls_relay import RelayTLSFactory, TlsClientSide
from balancer.tlsfiles import TLSError

if TYPE_CHECKING:
    from balancer.server_service import ServerService


def factory(server: ServerService) -> Any:
    """
    What serves the listener's clients: TLS around a relay per client, with
    C{[tls]}'s certificate files read now, and the certificates of its
    C{acme_hosts} chosen by the server name clients send.

    @raise balancer.proxy.tls.TLSError: if C{[tls]}'s files or settings cannot be used.
    """
    config = server.config
    assert config.tls is not None
    return RelayTLSFactory(
        server_context(config.tls, acme_certificates(server)), False, RelayFactory(server, TlsClientSide), server.clock
    )


def acme_certificates(server: ServerService) -> ServerCertificates | None:
    """
    The ACME certificates of the server's C{acme_hosts} (C{None} when it has none).

    @raise balancer.tlsfiles.TLSError: when C{[acme] challenge = "dns"}, which is not supported.
    """
    tls = server.config.tls
    if tls is None or not tls.acme_hosts or server.certificates is None:
        return None
    if server.certificates.challenge_kind == "dns":
        raise TLSError(
            "tls.acme_hosts",
            'the [acme] challenge "dns" is not supported (no DNS provider to answer it); '
            'use challenge = "http" or "sni", or give cert_path and key_path',
        )
    return server.certificates.only(tls.acme_hosts)


def listen(server: ServerService) -> Any:
    """
    Listen on the server's data path with TLS around a relay per client.

    @raise balancer.tlsfiles.TLSError: if C{[tls]}'s files or settings cannot be used.
    """
    bind = server.config.bind
    return server.path.listen(bind.port, factory(server), bind.listen_host, server.reuse_port)
