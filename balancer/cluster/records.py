"""
How the runtime changes (L{balancer.state.RuntimeChanges}) are laid out
under a cluster's prefix: one key per resource, so that a write conditions
on the resources it touches and nothing else.

 - C{servers/<name>}: a C{[servers.<name>]} created or replaced through
   the API (C{{"definition": {...}}}) or deleted (C{{"deleted": true}});
 - C{backends/<id>}: what is set on a /v1 server: the backend created
   through the API (C{"backend"}: its parameters and the services it is
   linked to), its admin state (C{"state"}) and its overrides
   (C{"override"}); C{{}} when nothing is set on it any more.

Keys are never deleted by a change (a tombstone is written instead), so a
resource's C{mod_revision} only grows: the C{ETag} made from it never comes
back.  Each value is a JSON object with the resource's fields and
C{changed_at} (epoch seconds) and C{changed_by} (the instance that wrote
it): every instance gives the same C{Last-Modified}.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping
from urllib.parse import quote, unquote

import attrs

from balancer.state import RuntimeChanges

SERVERS = "servers/"
BACKENDS = "backends/"
MEMBERS = "members/"

#: Written for a server a change removed.
SERVER_TOMBSTONE: dict[str, Any] = {"deleted": True}
#: Written for a /v1 server on which nothing is set any more.
BACKEND_TOMBSTONE: dict[str, Any] = {}


@attrs.frozen
class Record:
    """
    One resource's key as last read or written.

    @ivar fields: the resource's fields (without C{changed_at}/C{changed_by}).
    """

    fields: dict[str, Any]
    mod_revision: int
    changed_at: float
    changed_by: str


def server_key(name: str) -> str:
    """The key (under the prefix) of C{[servers.<name>]}."""
    return SERVERS + quote(name, safe="")


def backend_key(id: str) -> str:
    """The key (under the prefix) of the /v1 server C{id}."""
    return BACKENDS + quote(id, safe=":[]")


def layout(changes: RuntimeChanges) -> dict[str, dict[str, Any]]:
    """Every key C{changes} sets, with its fields."""
    keys: dict[str, dict[str, Any]] = {}
    for name in changes.deleted:
        keys[server_key(name)] = dict(SERVER_TOMBSTONE)
    for name, definition in changes.servers.items():
        keys[server_key(name)] = {"definition": definition}
    ids = set(changes.backends) | set(changes.backend_states) | set(changes.overrides)
    for id in ids:
        fields: dict[str, Any] = {}
        if id in changes.backends:
            fields["backend"] = changes.backends[id]
        if id in changes.backend_states:
            fields["state"] = changes.backend_states[id]
        if id in changes.overrides:
            fields["override"] = changes.overrides[id]
        keys[backend_key(id)] = fields
    return keys


def writes(old: RuntimeChanges, new: RuntimeChanges) -> dict[str, dict[str, Any]]:
    """
    The keys to write to turn C{old} into C{new}: each key whose fields
    differ, with its new fields or its tombstone.
    """
    before, after = layout(old), layout(new)
    result: dict[str, dict[str, Any]] = {}
    for key in sorted(set(before) | set(after)):
        fields = after[key] if key in after else _tombstone(key)
        if before.get(key) != fields:
            result[key] = fields
    return result


def changes_from(records: Mapping[str, Record]) -> RuntimeChanges:
    """The runtime changes the records (key under the prefix to record) describe."""
    changes = RuntimeChanges()
    for key, record in records.items():
        fields = record.fields
        if key.startswith(SERVERS):
            name = unquote(key[len(SERVERS):])
            if fields.get("deleted"):
                changes.deleted.add(name)
            elif isinstance(fields.get("definition"), dict):
                changes.servers[name] = fields["definition"]
        elif key.startswith(BACKENDS):
            id = unquote(key[len(BACKENDS):])
            if isinstance(fields.get("backend"), dict):
                changes.backends[id] = fields["backend"]
            if fields.get("state") in ("maintenance", "drain"):
                changes.backend_states[id] = fields["state"]
            if isinstance(fields.get("override"), dict):
                changes.overrides[id] = fields["override"]
    return changes


def encode(fields: Mapping[str, Any], changed_at: float, changed_by: str) -> bytes:
    """A key's value: its fields with C{changed_at} and C{changed_by}, as JSON."""
    return json.dumps({**fields, "changed_at": changed_at, "changed_by": changed_by},
                      sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode(value: bytes, mod_revision: int) -> Record:
    """
    The record a key's C{value} holds.

    @raise ValueError: naming what is wrong (not UTF-8 JSON, not an object, no valid C{changed_at}).
    """
    try:
        document = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not UTF-8 JSON: {e}") from e
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object, got {type(document).__name__}")
    changed_at = document.pop("changed_at", None)
    changed_by = document.pop("changed_by", "")
    if isinstance(changed_at, bool) or not isinstance(changed_at, (int, float)) or not math.isfinite(changed_at):
        raise ValueError("expected changed_at, a number of seconds")
    return Record(document, mod_revision, float(changed_at), str(changed_by))


def _tombstone(key: str) -> dict[str, Any]:
    return dict(SERVER_TOMBSTONE) if key.startswith(SERVERS) else dict(BACKEND_TOMBSTONE)
