"""A stand-in for a live relay: what the control layer's session views read of one."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define
class Address:
    """A client's address (C{host}, C{port}), as C{getPeer()} gives it."""

    host: str
    port: int


@attrs.define
class FakeRelay:
    """
    A relay in a server's C{relays}: its id, client, backend (a pool's
    L{balancer.backends.Backend} or None), bytes and start; C{close} is recorded.
    """

    id: int
    client_address: Address
    backend: Any = None
    rx: int = 0
    tx: int = 0
    started_at: float = 0.0
    closed: bool = False

    def close(self) -> None:
        """Record that the relay was closed."""
        self.closed = True
