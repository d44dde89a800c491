"""
The query parameters of /v1: C{pretty}, C{fields[type]} (sparse fieldsets),
C{filter=<JSON pointer>=<value>} and C{page[size]}/C{page[number]} (from 0)
on collections.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

import attrs
from jsonpointer import JsonPointer, JsonPointerException

from admin.v1.errors import bad_request
from balancer.config.decode import DecodeError, loads_json

_MISSING = object()


@attrs.frozen
class Query:
    """
    The parsed parameters of one request.

    @ivar fields: type to the attribute or relationship names (C{a/b} for nested attributes) to keep.
    @ivar filters: (pointer, raw value, the value read as JSON if it is JSON)
        triples a collection member must match.
    @ivar size: the page size, None for all.
    @ivar number: the page number, from 0.
    @ivar args: every query parameter, to build page links.
    """

    pretty: bool = True
    fields: dict[str, list[str]] = attrs.Factory(dict)
    filters: list[tuple[JsonPointer, str, Any]] = attrs.Factory(list)
    size: int | None = None
    number: int = 0
    args: list[tuple[str, str]] = attrs.Factory(list)


def parse_pretty(args: dict[bytes, list[bytes]]) -> bool:
    """C{pretty}, leniently (for error answers): anything but C{false} is true."""
    return args.get(b"pretty", [b"true"])[-1] != b"false"


def parse(args: dict[bytes, list[bytes]]) -> Query:
    """
    Read the query parameters.

    @raise ApiError: 400 naming the parameter with a bad value.
    """
    decoded = [(k.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for k, vs in args.items() for v in vs]
    pretty = args.get(b"pretty", [b"true"])[-1]
    if pretty not in (b"true", b"false"):
        raise bad_request(f'pretty must be "true" or "false", got "{pretty.decode("utf-8", "replace")}"')
    fields: dict[str, list[str]] = {}
    filters = []
    size: int | None = None
    number: int | None = None
    for key, value in decoded:
        if key.startswith("fields[") and key.endswith("]"):
            fields[key[7:-1]] = [f for f in value.split(",") if f]
        elif key == "filter":
            pointer, sep, wanted = value.partition("=")
            try:
                filters.append((JsonPointer(pointer), wanted, _json_or_missing(wanted)))
            except JsonPointerException:
                raise bad_request(f'filter is "<JSON pointer>=<value>" like "/attributes/state=Running", got "{value}"') from None
            if not sep:
                raise bad_request(f'filter is "<JSON pointer>=<value>" like "/attributes/state=Running", got "{value}"')
        elif key == "page[size]":
            size = _number(key, value, 1)
        elif key == "page[number]":
            number = _number(key, value, 0)
    if number is not None and size is None:
        raise bad_request("page[number] needs page[size]")
    return Query(pretty == b"true", fields, filters, size, number or 0, decoded)


#: The largest C{page[size]} and C{page[number]}.
MAX_PAGE = 999_999_999


def _number(key: str, value: str, lowest: int) -> int:
    """A page parameter: ASCII digits only, from C{lowest} to L{MAX_PAGE}."""
    if not (value.isascii() and value.isdigit()) or len(value) > 9 or int(value) < lowest:
        shown = value if len(value) <= 20 else value[:20] + "..."
        raise bad_request(f'{key} must be a whole number from {lowest} to {MAX_PAGE}, got "{shown}"')
    return int(value)


def _json_or_missing(text: str) -> Any:
    """C{text} read as JSON, or L{_MISSING} if it is not JSON (within the bounds of L{loads_json})."""
    try:
        return loads_json(text)
    except DecodeError:
        return _MISSING


def sparse(resource: dict[str, Any], query: Query) -> dict[str, Any]:
    """C{resource} with only the fields C{fields[<its type>]} names (all without such a parameter)."""
    wanted = query.fields.get(resource["type"])
    if wanted is None:
        return resource
    attributes: dict[str, Any] = {}
    for field in wanted:
        _copy(resource.get("attributes", {}), attributes, field.split("/"))
    result = {**resource, "attributes": attributes}
    if "relationships" in resource:
        result["relationships"] = {k: v for k, v in resource["relationships"].items() if k in wanted}
    return result


def _copy(source: dict[str, Any], target: dict[str, Any], keys: list[str]) -> None:
    """Copy C{source[k0][k1]...} into C{target} at the same place, if it exists."""
    head, rest = keys[0], keys[1:]
    if not isinstance(source, dict) or head not in source:
        return
    if not rest:
        target[head] = source[head]
        return
    inner = target.setdefault(head, {})
    if isinstance(inner, dict):
        _copy(source[head], inner, rest)
        if not inner:
            del target[head]


def matches(resource: dict[str, Any], query: Query) -> bool:
    """Whether C{resource} passes every C{filter}: the value at the pointer equals the given JSON value or text."""
    for pointer, wanted, parsed in query.filters:
        value = pointer.resolve(resource, _MISSING)
        if value is _MISSING:
            return False
        if value != parsed and not (isinstance(value, str) and value == wanted):
            return False
    return True


def collection(self_path: str, members: list[dict[str, Any]], query: Query) -> dict[str, Any]:
    """
    The collection document: members filtered, paged (with C{first}, C{last},
    C{prev}, C{next} links) and reduced to their sparse fieldsets.
    """
    selected = [m for m in members if matches(m, query)]
    links = {"self": _link(self_path, query, query.number if query.size else None)}
    if query.size is not None:
        last = max(0, math.ceil(len(selected) / query.size) - 1)
        links["first"] = _link(self_path, query, 0)
        links["last"] = _link(self_path, query, last)
        if query.number > 0:
            links["prev"] = _link(self_path, query, min(query.number - 1, last))
        if query.number < last:
            links["next"] = _link(self_path, query, query.number + 1)
        selected = selected[query.number * query.size:(query.number + 1) * query.size]
    return {"links": links, "data": [sparse(m, query) for m in selected]}


def _link(self_path: str, query: Query, number: int | None) -> str:
    """C{self_path} with the request's parameters, and C{page[number]} set to C{number} when given."""
    args = [(k, v) for k, v in query.args if k != "page[number]" or number is None]
    if number is not None:
        args.append(("page[number]", str(number)))
    return self_path + ("?" + urlencode(args) if args else "")
