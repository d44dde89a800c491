"""
The OpenAPI 3.1 description of both APIs (the root API, gobetween's, and
/v1), served at C{/v1/openapi.json}.  Built here from the same tables the
routes use (resource types and their methods), and kept true by a test that
validates it and runs schemathesis against a live API.
"""

from __future__ import annotations

from typing import Any

from admin.v1.filters import Filters
from admin.v1.kind import Kind
from admin.v1.listeners import Listeners
from admin.v1.monitors import Monitors
from admin.v1.servers import STATES, Servers
from admin.v1.services import Services
from admin.v1.sessions import Sessions
from admin.v1.users import Users
from balancer import __version__

_REF = "#/components/schemas/"
_JSON = "application/json"

#: What the members of each collection are.
_TITLES = {
    Services: "a configured server ([servers.<name>]): balance, protocol, limits, state",
    Servers: "a backend: address, port, weight, priority, max_connections; state; statistics",
    Listeners: "a service's bind address and protocol",
    Monitors: "a service's health check",
    Filters: "a service's access rules",
    Sessions: "a live client connection",
}

#: The codes every /v1 answer may have besides its own.
_COMMON = {
    "400": "malformed request, query parameter or document",
    "401": "credentials missing or wrong (WWW-Authenticate: Basic)",
    "403": "a basic account writing; a write from another origin (see [api] cors_origins); "
           "with no account, a write from another host; an exec without [api] allow_exec",
    "404": "no such resource",
    "405": "method not allowed here (see Allow)",
    "406": "the Accept header excludes application/json",
    "412": "If-Match / If-Unmodified-Since / If-None-Match not met",
    "414": "URI over 8 KiB",
    "428": "require_conditional: If-Match or If-Unmodified-Since needed",
    "429": "too many failed logins from this address (see Retry-After)",
    "431": "header fields too large",
    "503": "shutting down, or too many logins being checked (see Retry-After)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {_JSON: {"schema": schema}}}


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _errors(*codes: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    described = {**_COMMON, **(extra or {})}
    return {code: {"description": described[code], **_json(_ref("Errors")), "headers": _headers("Allow")}
            for code in sorted({*_COMMON, *codes})}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref(schema)), "headers": _headers("Allow", "ETag", "Last-Modified")}


_NOT_MODIFIED = {"description": "not modified since If-None-Match / If-Modified-Since",
                 "headers": _headers("ETag", "Last-Modified")}
_PRECONDITION = {"412": "If-Match / If-Unmodified-Since / If-None-Match not met"}
_PARAMS = [{"$ref": "#/components/parameters/pretty"}]
_COLLECTION_PARAMS = _PARAMS + [{"$ref": f"#/components/parameters/{p}"} for p in ("filter", "page_size", "page_number")]
_PREFER = [{"$ref": "#/components/parameters/Prefer"}]
_CONDITIONAL = [{"$ref": f"#/components/parameters/{h}"} for h in
                ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")]


def _id(name: str = "id") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _read(schema: str, summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"summary": summary, "parameters": params + _CONDITIONAL,
            "responses": {"200": _ok(schema, summary), "304": _NOT_MODIFIED, **_errors(extra=_PRECONDITION)}}


def _write(summary: str, body: dict[str, Any] | None, ok: dict[str, Any], params: list[dict[str, Any]],
           extra: dict[str, str]) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "parameters": params + _CONDITIONAL,
                                 "responses": {**ok, **_errors(*extra, extra={**_PRECONDITION, **extra})}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


_WRITE_CODES = {
    "409": "id taken, resource in use, or not possible (see detail)",
    "411": "a body without Content-Length",
    "413": "body over 1 MiB",
    "415": "Content-Type is not JSON",
    "422": "bad values, each with its JSON pointer",
    "423": "an operation on the resource is in progress",
}
_DELETE_CODES = {k: _WRITE_CODES[k] for k in ("409", "415", "423")}


def _patch_body(schema: str) -> dict[str, Any]:
    return {_JSON: {"schema": _ref(schema)},
            "application/json-patch+json": {"schema": _ref("JsonPatch")}}


def _kind_paths(kind: type[Kind], prefix: str = "") -> dict[str, Any]:
    """The paths of one resource type: its collection, its members, their relationships."""
    type_ = kind.type
    base = prefix or f"/v1/{type_}"
    title = _TITLES.get(kind, type_)
    collection: dict[str, Any] = {"get": _read("Collection", f"every {type_} resource: {title}", _COLLECTION_PARAMS)}
    if "POST" in kind.collection_methods:
        collection["post"] = _write(
            f"create a {type_} resource", {_JSON: {"schema": _ref(f"New{type_.title()}")}},
            {"204": {"description": "created", "headers": _headers("Allow", "ETag", "Last-Modified", "Location")},
             "201": {"description": "created, with Prefer: return=representation", **_json(_ref("Document")),
                     "headers": _headers("Allow", "ETag", "Last-Modified", "Location", "Preference-Applied")}},
            _PARAMS + _PREFER, _WRITE_CODES)
    member: dict[str, Any] = {"get": _read("Document", f"one {type_} resource", [_id()] + _PARAMS)}
    if "PATCH" in kind.member_methods:
        member["patch"] = _write(
            f"change a {type_} resource (merged partial document, or JSON Patch)", _patch_body("Update"),
            {"204": {"description": "changed", "headers": _headers("Allow", "Accept-Patch", "ETag", "Last-Modified")},
             "200": {"description": "changed, with Prefer: return=representation", **_json(_ref("Document")),
                     "headers": _headers("Allow", "Accept-Patch", "ETag", "Last-Modified", "Preference-Applied")}},
            [_id()] + _PARAMS + _PREFER, _WRITE_CODES)
    if "DELETE" in kind.member_methods:
        member["delete"] = _write(f"delete a {type_} resource", None, {"204": {"description": "deleted"}},
                                  [_id()] + _PARAMS, _DELETE_CODES)
    paths = {base: collection, f"{base}/": collection, f"{base}/{{id}}": member}
    if kind not in (Users,):
        relationship: dict[str, Any] = {"get": _read("Relationship", "one relationship of the resource",
                                                     [_id(), _id("name")] + _PARAMS)}
        if kind.writable:
            relationship["patch"] = _write(
                f"replace a writable relationship ({', '.join(kind.writable)})",
                {_JSON: {"schema": _ref("Linkage")}, "application/json-patch+json": {"schema": _ref("JsonPatch")}},
                {"204": {"description": "changed"}}, [_id(), _id("name")] + _PARAMS, _WRITE_CODES)
        paths[f"{base}/{{id}}/relationships/{{name}}"] = relationship
    return paths


def _state_path(required: bool) -> dict[str, Any]:
    state = {"name": "state", "in": "query", "required": required, "schema": {"type": "string", "enum": list(STATES)}}
    summary = ("put a server in maintenance (no new connections) or drain (keeps its relays, no new ones)"
               if required else "clear a server's admin state (all, or only the one named)")
    return {"put": _write(summary, None, {"204": {"description": "done"}}, [_id(), state] + _PARAMS,
                          {k: _WRITE_CODES[k] for k in ("415", "423")})}


def _root_paths() -> dict[str, Any]:
    """gobetween's root API: answers are JSON in the configuration's key names; errors a JSON string."""
    message = {"description": "a JSON string saying why", **_json({"type": "string"})}
    name = _id("name")
    definition = {"type": "object", "description": "a server definition in configuration key names"}
    errors = {code: message for code in ("400", "401", "403", "404", "405", "409", "413", "429", "503")}
    write_errors = {**errors, "415": message}
    return {
        "/": {"get": {"summary": "process information", "responses": {
            "200": {"description": "pid, startTime, time, uptime, version, configuration",
                    **_json({"type": "object", "required": ["pid", "version"]})}, **errors}}},
        "/ping": {"get": {"summary": "public health check", "security": [], "responses": {
            "200": {"description": '"OK"', **_json({"const": "OK"})}}}},
        "/dump": {"get": {"summary": "the effective configuration (admin accounts)", "parameters": [
            {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["toml", "json"]}}],
            "responses": {"200": {"description": "TOML or JSON", "content": {
                "application/toml; charset=utf-8": {"schema": {"type": "string"}},
                _JSON: {"schema": {"type": "object"}}}}, **errors}}},
        "/servers": {"get": {"summary": "every server's definition by name", "responses": {
            "200": {"description": "name to definition",
                    **_json({"type": "object", "additionalProperties": definition})}, **errors}}},
        "/servers/{name}": {
            "get": {"summary": "one server's definition", "parameters": [name],
                    "responses": {"200": {"description": "its definition", **_json(definition)}, **errors}},
            "post": {"summary": "create and start a server", "parameters": [name],
                     "requestBody": {"required": True, "content": {_JSON: {"schema": definition}}},
                     "responses": {"200": {"description": "its definition with defaults", **_json(definition)},
                                   **write_errors}},
            "delete": {"summary": "stop and remove a server", "parameters": [name],
                       "responses": {"200": {"description": "null", **_json({"type": "null"})}, **write_errors}},
        },
        "/servers/{name}/stats": {"get": {"summary": "gobetween's statistics document", "parameters": [name],
                                          "responses": {"200": {"description": "statistics", **_json({
                                              "type": "object", "required": ["active_connections", "backends"]})},
                                              **errors}}},
    }


def _schemas() -> dict[str, Any]:
    identifier = {"type": "object", "required": ["id", "type"],
                  "properties": {"id": {"type": "string"}, "type": {"type": "string"}}}
    links = {"type": "object", "additionalProperties": {"type": "string"}}
    relationship = {"type": "object", "required": ["data", "links"],
                    "properties": {"data": {"type": "array", "items": _ref("Identifier")}, "links": links}}
    resource = {"type": "object", "required": ["id", "type", "attributes", "links"], "properties": {
        "id": {"type": "string"}, "type": {"type": "string"}, "attributes": {"type": "object"},
        "relationships": {"type": "object", "additionalProperties": _ref("Relationship")},
        "links": {"type": "object", "required": ["self"], "properties": {"self": {"type": "string"}}}}}

    def new(type_: str, parameters: dict[str, Any], related: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "object", "required": ["id", "attributes"], "properties": {
            "id": {"type": "string"}, "type": {"const": type_},
            "attributes": {"type": "object", "required": ["parameters"], "properties": {"parameters": parameters}}}}
        if related:
            data["properties"]["relationships"] = {"type": "object", "properties": {related: _ref("Linkage")}}
        return {"type": "object", "required": ["data"], "properties": {"data": data}}

    server_parameters = {"type": "object", "required": ["address", "port"], "properties": {
        "address": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "weight": {"type": "integer", "minimum": 0}, "priority": {"type": "integer", "minimum": 0},
        "max_connections": {"type": "integer", "minimum": 0}, "sni": {"type": "string"}}}
    service_parameters = {"type": "object", "required": ["bind", "discovery"], "properties": {
        "bind": {"type": "string"}, "protocol": {"enum": ["tcp", "tls", "udp"]},
        "balance": {"enum": ["weight", "roundrobin", "leastconn", "leastbandwidth", "iphash", "iphash1"]},
        "discovery": {"type": "object", "required": ["kind"], "properties": {"kind": {"type": "string"}}}}}
    return {
        "Identifier": identifier,
        "Relationship": relationship,
        "Linkage": {"type": "object", "required": ["data"], "properties": {
            "data": {"oneOf": [{"type": "array", "items": identifier}, {"type": "null"}]}}},
        "Resource": resource,
        "Document": {"type": "object", "required": ["links", "data"],
                     "properties": {"links": links, "data": _ref("Resource")}},
        "Collection": {"type": "object", "required": ["links", "data"],
                       "properties": {"links": links, "data": {"type": "array", "items": _ref("Resource")}}},
        "Update": {"type": "object", "required": ["data"], "properties": {"data": {"type": "object", "properties": {
            "id": {"type": "string"}, "type": {"type": "string"},
            "attributes": {"type": "object", "properties": {"parameters": {"type": "object"}}},
            "relationships": {"type": "object", "additionalProperties": _ref("Linkage")}}}}},
        "NewServers": new("servers", server_parameters, "services"),
        "NewServices": new("services", service_parameters, "servers"),
        "JsonPatch": {"type": "array", "items": {"type": "object", "required": ["op", "path"], "properties": {
            "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]}, "path": {"type": "string"},
            "from": {"type": "string"}, "value": {}}}},
        "Errors": {"type": "object", "required": ["errors"], "properties": {"errors": {
            "type": "array", "minItems": 1, "items": {"type": "object", "required": ["detail"], "properties": {
                "detail": {"type": "string"},
                "source": {"type": "object", "properties": {"pointer": {"type": "string"}}}}}}}},
        "Root": {"type": "object", "required": ["links"], "properties": {"links": links, "meta": {"type": "object"}}},
        "Reload": {"type": "object", "required": ["links", "meta"], "properties": {"links": links, "meta": {
            "type": "object", "required": ["summary", "added", "removed", "changed", "refused", "restart_needed"],
            "properties": {"summary": {"type": "string"}}}}},
    }


def _components() -> dict[str, Any]:
    def header(description: str) -> dict[str, Any]:
        return {"description": description, "schema": {"type": "string"}}

    def request_header(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "in": "header", "required": False, "description": description, "schema": {"type": "string"}}

    return {
        "schemas": _schemas(),
        "headers": {
            "Allow": header("the methods the resource supports"),
            "Accept-Patch": header("application/json, application/json-patch+json"),
            "ETag": header("strong tag of the resource's configuration (not of its statistics)"),
            "Last-Modified": header("when the resource's configuration last changed (HTTP-date)"),
            "Location": header("the new resource's path"),
            "Preference-Applied": header("return=representation: the answer holds the document"),
        },
        "parameters": {
            "pretty": {"name": "pretty", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]},
                       "description": "indent the JSON by 4 spaces (default true)"},
            "filter": {"name": "filter", "in": "query", "schema": {"type": "string", "pattern": "^/[^=]*=.*$"},
                       "description": "<JSON pointer>=<value>, e.g. /attributes/state=Running"},
            "page_size": {"name": "page[size]", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                          "maximum": 100000}},
            "page_number": {"name": "page[number]", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                              "maximum": 100000},
                            "description": "from 0; needs page[size]"},
            **{name: request_header(name, description) for name, description in (
                ("If-Match", "ETag values; the request applies only if one matches"),
                ("If-None-Match", "ETag values; 304 (reads) or 412 (writes) if one matches"),
                ("If-Modified-Since", "HTTP-date; 304 if not modified since"),
                ("If-Unmodified-Since", "HTTP-date; 412 if modified since"),
                ("Prefer", "return=representation: a PATCH or a creating POST answers the document, not 204"))},
        },
        "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    paths: dict[str, Any] = {
        "/v1/": {"get": {"summary": "the /v1 API's entry point", "parameters": _PARAMS,
                         "responses": {"200": {"description": "links to every collection", **_json(_ref("Root")),
                                               "headers": _headers("Allow")}, **_errors()}}},
        "/v1/openapi.json": {"get": {"summary": "this document", "parameters": _PARAMS + _CONDITIONAL, "responses": {
            "200": {"description": "OpenAPI 3.1", **_json({"type": "object", "required": ["openapi"]}),
                    "headers": _headers("Allow", "ETag", "Last-Modified")},
            "304": _NOT_MODIFIED, **_errors(extra=_PRECONDITION)}}},
        "/v1/balancer": {"get": _read("Document", "the process: version, pid, uptime, started_at, revision",
                                      _PARAMS)},
        "/v1/maxscale": {"get": _read("Document", "the process in MaxScale's shape: version, uptime, started_at, "
                                                  "parameters (the process-wide configuration)", _PARAMS)},
        "/v1/cluster": {"get": _read("Document", "the cluster ([cluster]): name, prefix, endpoints, whether etcd "
                                                 "answers, the revision applied, errors, and every member "
                                                 "(address, version, started_at, heartbeat, applied_revision, "
                                                 "errors); 404 without [cluster]", _PARAMS)},
    }
    for kind in (Services, Servers, Listeners, Monitors, Filters, Sessions):
        paths.update(_kind_paths(kind))
    paths.update(_kind_paths(Users, "/v1/users/inet"))
    paths["/v1/servers/{id}/set"] = _state_path(True)
    paths["/v1/servers/{id}/clear"] = _state_path(False)
    paths["/v1/servers/{id}/sessions"] = {"delete": _write(
        "close every session of a server, in every worker process", None, {"204": {"description": "closed"}},
        [_id()] + _PARAMS, {"423": _WRITE_CODES["423"]})}
    paths["/v1/balancer/reload"] = {"post": _write(
        "load the configuration file again (as SIGHUP): servers added, removed and changed, runtime changes kept",
        None, {"200": {"description": "applied; meta says what changed (summary, added, removed, changed, "
                                      "refused, restart_needed)", **_json(_ref("Reload"))}},
        _PARAMS, {"422": "the configuration file does not validate: one error per problem, nothing changed"})}
    paths.update(_root_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "balancer admin API", "version": __version__,
                 "description": "The root API (gobetween's REST API) and /v1 (MaxScale's REST API conventions, "
                                "JSON:API documents; collections answer with a trailing slash too; a PATCH or a "
                                "creating POST answers 204 unless Prefer: return=representation)."},
        "servers": [{"url": "/"}],
        "security": [{"basic": []}, {}],
        "paths": paths,
        "components": _components(),
    }
