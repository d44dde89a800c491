"""Why a test cannot run on this machine: a C{skip} reason, or None where it can."""

from __future__ import annotations

import os
import select

#: The relay engine and its spliced sockets need epoll and C{os.splice}, which only Linux has.
NO_ENGINE: str | None = (
    None if hasattr(select, "epoll") and hasattr(os, "splice") else "the relay engine needs epoll and os.splice (Linux)"
)
