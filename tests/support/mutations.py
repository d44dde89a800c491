"""Walking and rewriting nested JSON-like values, for the tests that mutate documents with hypothesis."""

from __future__ import annotations

from typing import Any


def paths(value: Any, depth: int | None = None, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) to a value inside C{value}, itself included; down to C{depth} levels if given."""
    found = [path]
    if depth is not None and len(path) >= depth:
        return found
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, depth, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, depth, (*path, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of C{value} with what is at C{path} replaced by C{new} (the copies along the path only)."""
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy
