"""
Resources locked while an operation on them is in progress: a second write
to the same resource meanwhile gets 423.  Kept per control interface, so
every account's API sees the same locks.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

from admin.v1.errors import ApiError
from balancer.control.interface import IControl

_held: "weakref.WeakKeyDictionary[IControl, set[str]]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def hold(control: IControl, key: str) -> Iterator[None]:
    """
    Lock C{key} (a resource path) for the duration of the block.

    @raise ApiError: 423 if an operation already holds it.
    """
    held = _held.setdefault(control, set())
    if key in held:
        raise ApiError(423, f"{key} is locked: an operation on it is in progress")
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
