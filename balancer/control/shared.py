"""
L{ISharedChanges}: what the control layer needs of a store its runtime
changes are shared through (C{[cluster]}, L{balancer.cluster}).  Without
one, changes are this process's alone (and its C{[state] path}'s).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from zope.interface import Interface

from balancer.control.views import ClusterView
from balancer.state import RuntimeChanges

#: What a command's change was based on: the store revision of every shared key when it was asked for.
Basis = dict[str, int]

#: Applies the changes that arrived from the store, read from the callable when their turn
#: comes (not when they arrived); fires with the problems that kept parts of them out.
ApplyShared = Callable[[Callable[[], RuntimeChanges]], "Deferred[list[str]]"]


class ISharedChanges(Interface):
    """Runtime changes shared with other balancers, with a revision per resource."""

    def basis() -> Basis:
        """What a change asked for now is based on (taken when the API checked its preconditions)."""

    def commit(old: RuntimeChanges, new: RuntimeChanges, basis: Basis) -> Deferred[None]:
        """
        Share the change from C{old} to C{new} in one transaction, provided
        none of the resources it touches changed after C{basis}.

        @return: fails with L{balancer.control.errors.ChangeConflict} (a
            resource changed: nothing written) or
            L{balancer.control.errors.ClusterUnavailable}.
        """

    def version(kind: str, name: str) -> int | None:
        """
        The store revision that last changed a resource (C{kind} "server" for
        C{[servers.<name>]}, "backend" for a /v1 server id); None while
        nothing shared sets it.
        """

    def changed_at(kind: str, name: str) -> float | None:
        """When the shared change of that resource was made (by whichever balancer), or None."""

    def view() -> ClusterView:
        """The cluster now."""
