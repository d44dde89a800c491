"""
JSON:API documents of the /v1 API: resource objects with relationships and
self links, reading request documents, RFC 7386 merging, and turning
configuration problems into 422 errors with JSON pointers.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any, Iterable, Mapping
from urllib.parse import quote

from admin.jsonbody import BodyError, read_json
from admin.v1.errors import ApiError, bad_request, unprocessable
from balancer.config.errors import ConfigError

#: Where the API lives.
BASE = "/v1"

#: The media type of every answer.
JSON = b"application/json"


def path(*segments: str) -> str:
    """The absolute path of C{/v1/<segments>}, each segment percent-encoded (C{:} kept)."""
    return "/".join([BASE, *(quote(s, safe=":") for s in segments)])


def resource(type_: str, id: str, attributes: dict[str, Any],
             relationships: Mapping[str, tuple[str, Iterable[str]]] | None = None, self_link: str | None = None) -> dict[str, Any]:
    """
    A resource object: C{id}, C{type}, C{attributes}, C{relationships} and C{links.self}.

    @param relationships: name to (related type, related ids).
    @param self_link: the resource's path, if not C{/v1/<type>/<id>}.
    """
    link = self_link or path(type_, id)
    document: dict[str, Any] = {"id": id, "type": type_, "attributes": attributes, "links": {"self": link}}
    if relationships is not None:
        document["relationships"] = {
            name: relationship(link, name, related, ids) for name, (related, ids) in relationships.items()
        }
    return document


def relationship(owner: str, name: str, related: str, ids: Iterable[str]) -> dict[str, Any]:
    """A relationship object: C{data} (identifiers) and C{links} C{self} and C{related}."""
    return {
        "data": [{"id": i, "type": related} for i in ids],
        "links": {"self": f"{owner}/relationships/{name}", "related": path(related)},
    }


def top(self_link: str, data: Any) -> dict[str, Any]:
    """A top-level document."""
    return {"links": {"self": self_link}, "data": data}


def dumps(document: Any, pretty: bool) -> bytes:
    """The document as JSON: indented by 4 spaces when C{pretty}, else compact."""
    if pretty:
        return json.dumps(document, indent=4).encode("utf-8") + b"\n"
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def parse_json(content: IO[bytes] | None) -> Any:
    """
    The JSON value of a request body (read by L{admin.jsonbody}).

    @raise ApiError: 400 if it is not UTF-8 JSON within the bounds of
        L{admin.jsonbody}; 413 if it is too long.
    """
    try:
        return read_json(content)
    except BodyError as e:
        raise ApiError(e.code, str(e)) from None


def resource_data(document: Any, type_: str, id: str | None = None) -> dict[str, Any]:
    """
    The resource object in a request document, checked for shape.

    @param id: the id the target resource has, if it exists.
    @raise ApiError: 400 when the shape is wrong; 409 when C{type} or C{id}
        names another resource.
    """
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise bad_request('expected a JSON:API document: {"data": {...}}', "/data")
    data = document["data"]
    for key in ("attributes", "relationships"):
        if key in data and not isinstance(data[key], dict):
            raise bad_request(f'"{key}" must be an object', f"/data/{key}")
    attributes = data.get("attributes", {})
    if "parameters" in attributes and not isinstance(attributes["parameters"], dict):
        raise bad_request('"parameters" must be an object', "/data/attributes/parameters")
    for key in ("id", "type"):
        if key in data and not isinstance(data[key], str):
            raise bad_request(f'"{key}" must be a string', f"/data/{key}")
    if data.get("type", type_) != type_:
        raise ApiError(409, f'the document is of type "{data["type"]}", this resource of type "{type_}"')
    if id is not None and data.get("id", id) != id:
        raise ApiError(409, f'the document has id "{data["id"]}", this resource "{id}"')
    return data


def related_ids(data: dict[str, Any], name: str, type_: str) -> list[str] | None:
    """
    The ids of relationship C{name} in a resource object (None if absent).

    @raise ApiError: 400 for a relationship that is not C{{"data": [{"id", "type"}]}};
        422 for identifiers of another type.
    """
    relationships = data.get("relationships", {})
    if name not in relationships:
        return None
    return linkage(relationships[name], type_, f"/data/relationships/{name}")


def linkage(document: Any, type_: str, pointer: str = "") -> list[str]:
    """
    The ids of a relationship document C{{"data": [{"id": ..., "type": ...}, ...]}} (or C{null}).

    @raise ApiError: 400 for another shape, 422 for identifiers of another type.
    """
    if not isinstance(document, dict) or "data" not in document:
        raise bad_request('expected a relationship: {"data": [{"id": ..., "type": ...}]}', pointer)
    entries = document["data"]
    if entries is None:
        return []
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise bad_request('"data" must be a list of resource identifiers', f"{pointer}/data")
    ids, wrong = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not isinstance(entry.get("type"), str):
            raise bad_request('a resource identifier is {"id": "...", "type": "..."}', f"{pointer}/data/{i}")
        if entry["type"] != type_:
            wrong.append((f"{pointer}/data/{i}/type", f'expected type "{type_}", got "{entry["type"]}"'))
        ids.append(entry["id"])
    if wrong:
        raise unprocessable(wrong)
    return ids


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge: objects merge key by key, C{null} removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def parameters(data: dict[str, Any]) -> dict[str, Any] | None:
    """C{data.attributes.parameters}, if given."""
    return data.get("attributes", {}).get("parameters")


_SEGMENT = re.compile(r'"([^"]*)"|\[(\d+)\]|([^.\["]+)')


def config_problems(error: ConfigError, prefix: str, base: str = "/data/attributes/parameters") -> ApiError:
    """
    422 with one error per problem of C{error}, each pointing into the request
    document: a problem at C{<prefix>.a.b[0]} points at C{<base>/a/b/0}; one
    at C{prefix} itself (a bad name) at C{/data/id}.
    """
    found = []
    for problem in error.problems:
        segments = [next(g for g in m.groups() if g is not None) for m in _SEGMENT.finditer(problem.path)]
        owner = [next(g for g in m.groups() if g is not None) for m in _SEGMENT.finditer(prefix)]
        if segments == owner:
            pointer = "/data/id"
        elif segments[: len(owner)] == owner:
            pointer = base + "".join("/" + escape(s) for s in segments[len(owner):])
        else:
            pointer = base
        found.append((pointer, f"{problem.path}: {problem.message}" if problem.path else problem.message))
    return unprocessable(found)


def escape(segment: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return segment.replace("~", "~0").replace("/", "~1")
