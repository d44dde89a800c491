"""
A closed-loop TLS client for the comparison: each connection handshakes
(full, or resumed from the session of the connection before), asks for one
small page with HTTP/1.0 and reads the answer to its end; it counts the
connections and those whose session was reused.  Run by C{compare.py}, one
process per concurrent client::

    python bench/handshakes.py --seconds 5 --target NAME@PORT [--target ...]
        [--resume] [--tls 1.2|1.3] [--path /index.html]

Targets are used in turn (server name for SNI, port on 127.0.0.1).  Prints
one JSON line: connections, reused, failures, seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time

HOST = "127.0.0.1"
# The cipher of TLS 1.2 runs, the same on every server and client.
TLS12_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"


def client_context(tls: str) -> ssl.SSLContext:
    """A client context for TLS C{tls} ("1.2": pinned to L{TLS12_CIPHER}; "1.3"), not verifying (loopback bench)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    version = ssl.TLSVersion.TLSv1_2 if tls == "1.2" else ssl.TLSVersion.TLSv1_3
    context.minimum_version = context.maximum_version = version
    if tls == "1.2":
        context.set_ciphers(TLS12_CIPHER)
    return context


def parse_target(text: str) -> tuple[str, int]:
    """C{NAME@PORT} as (name, port)."""
    name, _, port = text.rpartition("@")
    if not name or not port.isdigit():
        raise argparse.ArgumentTypeError(f"target {text!r} is not NAME@PORT")
    return name, int(port)


def fetch(
    context: ssl.SSLContext, name: str, port: int, request: bytes, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession | None]:
    """
    One connection: handshake (offering C{session}), send C{request}, read
    the answer to its end; whether the session was reused, and the session
    to offer next.
    """
    raw = socket.create_connection((HOST, port), timeout=5)
    # Without it, a write after a resumed handshake waits for a delayed ACK (40 ms).
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = context.wrap_socket(raw, server_hostname=name, session=session)
    try:
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer {answer[:40]!r}")
        return bool(tls.session_reused), tls.session
    finally:
        tls.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--target", type=parse_target, action="append", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--tls", choices=("1.2", "1.3"), default="1.2")
    parser.add_argument("--path", default="/index.html")
    args = parser.parse_args()
    context = client_context(args.tls)
    request = f"GET {args.path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode()
    sessions: dict[tuple[str, int], ssl.SSLSession | None] = {t: None for t in args.target}
    connections = reused = failures = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        target = args.target[connections % len(args.target)]
        try:
            was_reused, session = fetch(context, *target, request, sessions[target] if args.resume else None)
        except (OSError, ssl.SSLError) as e:
            failures += 1
            if failures > 100:
                sys.exit(f"more than 100 failures, the last: {e}")
            continue
        connections += 1
        reused += was_reused
        if args.resume:
            sessions[target] = session
    print(json.dumps({"connections": connections, "reused": reused, "failures": failures,
                      "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
