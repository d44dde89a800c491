"""A TLS handshake between a client and a server connection in memory (their BIOs), for tests of contexts."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL


def memory_handshake(
    creator: Any, server_name: bytes | None = None, alpn: bytes | None = None
) -> tuple[SSL.Connection, SSL.Connection, SSL.Error | None]:
    """
    A client offering C{server_name} and C{alpn} handshakes with a server
    connection of C{creator} (an C{IOpenSSLServerConnectionCreator}), the
    bytes passed in memory.

    @return: the client's connection, the server's, and the error that
        ended the handshake (C{None} when it went through).
    """
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    client.set_connect_state()
    if server_name is not None:
        client.set_tlsext_host_name(server_name)
    if alpn is not None:
        client.set_alpn_protos([alpn])
    for _ in range(10):
        for sender, receiver in ((client, server), (server, client)):
            try:
                sender.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                return client, server, e
            try:
                receiver.bio_write(sender.bio_read(65536))
            except SSL.WantReadError:
                pass
    return client, server, None
