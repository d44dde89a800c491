"""
JSON Patch (RFC 6902) for C{PATCH} on /v1, bounded so that no patch can
hold the reactor for long or grow memory without bound.  It runs on the
reactor, bounded (not in a thread): a patch of at most L{MAX_OPERATIONS}
operations is applied one operation at a time, and before each one an
upper bound of the size and depth of the document it would make is
checked; past L{MAX_DOCUMENT} bytes or L{MAX_DEPTH} levels the patch is
refused (422) before that operation runs.

What an operation costs is bounded by what it adds: C{add} and C{replace}
values come from the body (itself at most 1 MiB), and a C{copy} is measured
(as JSON, at C speed) before it is made, then done as an C{add} of that
JSON decoded (jsonpatch deep-copies every added value once more).  So a
whole patch copies at most about L{MAX_DOCUMENT} bytes of values: measured
here, 19 copies of a service into itself are refused in about 40 ms, and
the worst patch within the bounds (100 operations copying up to the size
bound) in 70 to 130 ms (C{tests/test_admin_input.py} prints both).
"""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
from jsonpointer import JsonPointer, JsonPointerException

from admin.jsonbody import MAX_BODY
from admin.v1.errors import ApiError, bad_request, unprocessable
from balancer.config.decode import MAX_DEPTH, json_depth

#: The most operations one patch may have (more: 413).
MAX_OPERATIONS = 100

#: The largest document a patch may make, as compact JSON, in bytes (as a body may be).
MAX_DOCUMENT = MAX_BODY

_OPERATIONS = ("add", "remove", "replace", "move", "copy", "test")


def apply_patch(operations: Any, document: Any) -> Any:
    """
    Apply a JSON Patch to a copy of C{document}.

    @return: the patched document.
    @raise ApiError: 400 for a patch that is not a list of operations, 413
        for one of more than L{MAX_OPERATIONS} operations, 409 when a
        C{test} fails, 422 when a path does not exist or the document would
        grow past L{MAX_DOCUMENT} bytes or L{MAX_DEPTH} levels.
    """
    if not isinstance(operations, list):
        raise bad_request("a JSON Patch is a list of operations")
    if len(operations) > MAX_OPERATIONS:
        raise ApiError(413, f"a JSON Patch may have at most {MAX_OPERATIONS} operations, this one has {len(operations)}")
    text = json.dumps(document, separators=(",", ":"))
    size, depth = len(text), json_depth(text)
    result = json.loads(text)
    for i, operation in enumerate(operations):
        operation, grows_by, deepest = _measured(i, operation, result, depth, MAX_DOCUMENT - size)
        size += grows_by
        depth = max(depth, deepest)
        if size > MAX_DOCUMENT:
            raise unprocessable([(f"/{i}", f"the patch would make a document over {MAX_DOCUMENT} bytes")])
        if depth > MAX_DEPTH:
            raise unprocessable([(f"/{i}", f"the patch would make a document nested more than {MAX_DEPTH} levels deep")])
        result = _apply_one(operation, result)
    return result


def _measured(i: int, operation: Any, document: Any, depth: int, room: int) -> tuple[dict[str, Any], int, int]:
    """
    Operation C{i} as it will be applied (a C{copy} becomes an C{add}), an
    upper bound of the bytes it adds and of the depth of the document after it.

    @param room: the bytes the document may still grow by; a C{copy} of
        more is not made (the caller refuses the patch).
    """
    if not isinstance(operation, dict) or operation.get("op") not in _OPERATIONS:
        raise bad_request(f'operation {i} is not {{"op": "add|remove|replace|move|copy|test", "path": ...}}', f"/{i}")
    for key in ("path", "from") if operation["op"] in ("move", "copy") else ("path",):
        if not isinstance(operation.get(key), str):
            raise bad_request(f'operation {i} needs "{key}": a JSON pointer string', f"/{i}/{key}")
    try:
        at = len(JsonPointer(operation["path"]).parts)
        source = len(JsonPointer(operation["from"]).parts) if "from" in operation else 0
    except JsonPointerException as e:
        raise bad_request(f"operation {i}: {e}", f"/{i}") from None
    kind = operation["op"]
    if kind in ("add", "replace"):
        if "value" not in operation:
            raise bad_request(f'operation {i} needs "value"', f"/{i}")
        value = json.dumps(operation["value"], separators=(",", ":"))
        return operation, len(value) + len(operation["path"]), at + json_depth(value)
    if kind == "copy":
        try:
            copied = JsonPointer(operation["from"]).resolve(document)
        except JsonPointerException as e:
            raise unprocessable([(f"/{i}/from", f"JSON Patch cannot be applied: {e}")]) from None
        value = json.dumps(copied, separators=(",", ":"))
        grows_by = len(value) + len(operation["path"])
        if grows_by > room:
            return operation, grows_by, depth
        add = {"op": "add", "path": operation["path"], "value": json.loads(value)}
        return add, grows_by, at + max(0, depth - source)
    if kind == "move":
        return operation, len(operation["path"]), at + max(0, depth - source)
    return operation, 0, depth


def _apply_one(operation: dict[str, Any], document: Any) -> Any:
    """Apply one operation in place (the document is already this patch's own copy)."""
    try:
        return jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
    except jsonpatch.JsonPatchTestFailed as e:
        raise ApiError(409, f"JSON Patch test failed: {e}") from None
    except jsonpatch.InvalidJsonPatch as e:
        raise bad_request(f"not a valid JSON Patch: {e}") from None
    except (jsonpatch.JsonPatchConflict, JsonPointerException) as e:
        raise unprocessable([("", f"JSON Patch cannot be applied: {e}")]) from None
    except (TypeError, KeyError, IndexError, ValueError) as e:
        raise bad_request(f"not a valid JSON Patch: {e}") from None
