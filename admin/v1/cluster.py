"""
C{/v1/cluster}: the cluster this balancer belongs to (C{[cluster]}): its
name, prefix and etcd endpoints, whether etcd answers, the revision this
balancer has applied, the shared changes it could not apply, and every
member registered now, each as it last published itself (address,
version, start, last heartbeat, applied revision, errors).  404 without
C{[cluster]}.
"""

from __future__ import annotations

from typing import Any

from admin.gobetween import rfc3339
from admin.v1 import documents
from admin.v1.errors import ApiError
from admin.v1.kind import Kind
from balancer.control.views import ClusterView, MemberView


class Cluster(Kind):
    """The cluster, one resource of id its name."""

    type = "cluster"
    shared_as = None
    volatile = ("members", "available", "since", "last_error", "revision", "errors")

    def member_path(self, id: str) -> str:
        return documents.path("cluster")

    def members(self) -> list[dict[str, Any]]:
        return [self.get("")]

    def get(self, id: str) -> dict[str, Any]:
        view = self.control.cluster()
        if view is None:
            raise ApiError(404, "this balancer is not in a cluster: its configuration has no [cluster] section")
        return documents.resource(self.type, view.name, attributes(view), self_link=self.member_path(view.name))

    def changed_at(self, id: str) -> float:
        return self.control.changed_at("balancer", "")


def attributes(view: ClusterView) -> dict[str, Any]:
    """The cluster's attributes."""
    return {
        "name": view.name,
        "prefix": view.prefix,
        "instance": view.instance,
        "endpoints": list(view.endpoints),
        "available": view.available,
        "since": rfc3339(view.since),
        "last_error": view.last_error,
        "revision": view.revision,
        "errors": list(view.errors),
        "members": [member(m) for m in view.members],
    }


def member(view: MemberView) -> dict[str, Any]:
    """One member as the document shows it."""
    return {
        "instance": view.instance,
        "address": view.address,
        "version": view.version,
        "pid": view.pid,
        "started_at": rfc3339(view.started_at),
        "heartbeat": rfc3339(view.heartbeat),
        "applied_revision": view.applied_revision,
        "errors": list(view.errors),
    }
