"""
Successful logins remembered for a while (L{LIFETIME}), so a client that
sends the same right credentials again skips the slow hash.

An entry is found by an HMAC-SHA256, under a key drawn at random when the
cache is made (once per process), of the login and the password: neither is
kept, and the digest cannot be checked against guesses without the key.  It
holds the account the credentials matched; the checker accepts a hit only
while that account is still configured exactly so, so a changed password,
hash or account kind makes the entry useless.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

#: How long a successful login is remembered, in seconds.
LIFETIME = 60.0

#: Entries kept at most (there is one per account and password that worked).
MAX_ENTRIES = 1024

T = TypeVar("T")


class LoginCache(Generic[T]):
    """Successful logins, by keyed digest, each for L{LIFETIME} seconds from its check."""

    def __init__(self, clock: IReactorTime, lifetime: float = LIFETIME, max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._max_entries = max_entries
        self._key = os.urandom(32)
        self._entries: dict[bytes, tuple[T, float]] = {}

    def __len__(self) -> int:
        """How many entries are held (expired ones included until next touched)."""
        return len(self._entries)

    def digest(self, login: bytes, password: bytes) -> bytes:
        """The keyed digest that stands for C{login} and C{password}."""
        framed = len(login).to_bytes(4, "big") + login + password
        return hmac.new(self._key, framed, hashlib.sha256).digest()

    def get(self, login: bytes, password: bytes) -> T | None:
        """What C{login} and C{password} matched less than L{LIFETIME} seconds ago, or None."""
        key = self.digest(login, password)
        found = self._entries.get(key)
        if found is None:
            return None
        matched, expires = found
        if self._clock.seconds() >= expires:
            del self._entries[key]
            return None
        return matched

    def put(self, login: bytes, password: bytes, matched: T) -> None:
        """Remember that C{login} and C{password} matched C{matched}, from now."""
        now = self._clock.seconds()
        if len(self._entries) >= self._max_entries:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            while len(self._entries) >= self._max_entries:
                del self._entries[next(iter(self._entries))]
        self._entries[self.digest(login, password)] = (matched, now + self._lifetime)
