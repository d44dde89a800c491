"""Real ClientHellos, made by an OpenSSL client on a memory BIO, for the SNI tests."""

from __future__ import annotations

from typing import Sequence

from OpenSSL import SSL

_SSL_OP_TLSEXT_PADDING = 0x10
"""OpenSSL's C{SSL_OP_TLSEXT_PADDING} (pyOpenSSL has no name for it): pad a 256 to 511 byte hello to 512."""


def client_hello(
    name: bytes | None = None,
    alpn: Sequence[bytes] = (),
    max_version: int = SSL.TLS1_3_VERSION,
    *,
    tickets: bool = True,
    padding: bool = False,
    srtp: bool = False,
    ocsp: bool = False,
) -> bytes:
    """The first flight of a real OpenSSL client (pyOpenSSL): its ClientHello in one record."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(max_version)
    if alpn:
        context.set_alpn_protos(list(alpn))
    if not tickets:
        context.set_options(SSL.OP_NO_TICKET)
    if padding:
        context.set_options(_SSL_OP_TLSEXT_PADDING)
    if srtp:
        context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    if ocsp:
        context.set_ocsp_client_callback(lambda connection, ocsp_data, data: True)
    connection = SSL.Connection(context, None)
    if name is not None:
        connection.set_tlsext_host_name(name)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(1 << 16)
