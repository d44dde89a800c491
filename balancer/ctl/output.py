"""
What balancerctl prints: tables (C{rich}) by default, tab-separated lines
(C{--tsv}) for C{cut} and C{awk}, or the API's document as it came
(C{--json}).  The columns of each resource type are chosen here.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable

from rich import box
from rich.console import Console
from rich.table import Table

Row = list[str]
Column = tuple[str, Callable[[dict[str, Any]], Any]]


def _get(*keys: str) -> Callable[[dict[str, Any]], Any]:
    """The value at C{attributes.<keys>} of a resource (empty if absent)."""
    def get(resource: dict[str, Any]) -> Any:
        value: Any = resource.get("attributes", {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    return get


def _related(name: str) -> Callable[[dict[str, Any]], str]:
    """The ids of relationship C{name}, comma-separated."""
    def get(resource: dict[str, Any]) -> str:
        data = resource.get("relationships", {}).get(name, {}).get("data") or []
        return ", ".join(entry["id"] for entry in data)
    return get


def _client(resource: dict[str, Any]) -> str:
    client = resource.get("attributes", {}).get("client", {})
    return f'{client.get("address", "")}:{client.get("port", "")}'


#: The columns of C{list TYPE}, as (heading, value of a resource).
COLUMNS: dict[str, list[Column]] = {
    "services": [("Service", lambda r: r["id"]), ("Listening on", _get("listening_on")),
                 ("Protocol", _get("protocol")), ("Router", _get("router")), ("State", _get("state")),
                 ("Servers", _related("servers")), ("Connections", _get("statistics", "connections")),
                 ("Total", _get("statistics", "total_connections"))],
    "servers": [("Server", lambda r: r["id"]), ("Address", _get("parameters", "address")),
                ("Port", _get("parameters", "port")), ("State", _get("state")), ("Services", _related("services")),
                ("Connections", _get("statistics", "connections")), ("Weight", _get("parameters", "weight")),
                ("Origin", _get("origin"))],
    "listeners": [("Listener", lambda r: r["id"]), ("Service", _related("services")), ("Address", _get("address")),
                  ("Protocol", _get("parameters", "protocol")), ("State", _get("state"))],
    "monitors": [("Monitor", lambda r: r["id"]), ("Module", _get("module")), ("State", _get("state")),
                 ("Servers", _related("servers"))],
    "filters": [("Filter", lambda r: r["id"]), ("Module", _get("module")), ("Default", _get("parameters", "default")),
                ("Rules", lambda r: len(_get("parameters", "rules")(r) or [])), ("Services", _related("services"))],
    "sessions": [("Session", lambda r: r["id"]), ("Service", _get("service")), ("Client", _client),
                 ("Server", _get("server")), ("Rx", _get("rx")), ("Tx", _get("tx")), ("Age", _get("age"))],
    "users": [("User", lambda r: r["id"]), ("Account", _get("account")), ("Origin", _get("origin"))],
}


def text(value: Any) -> str:
    """A cell: empty for None, lists comma-separated, objects as JSON, anything else as str."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(text(v) for v in value)
    return str(value)


def collection_rows(type_: str, resources: Iterable[dict[str, Any]]) -> tuple[Row, list[Row]]:
    """The headings and rows of C{list TYPE}."""
    columns = COLUMNS[type_]
    return [heading for heading, _ in columns], [[text(get(r)) for _, get in columns] for r in resources]


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested objects as (dotted key, text) pairs."""
    if isinstance(value, dict) and value:
        pairs: list[tuple[str, str]] = []
        for key, inner in value.items():
            pairs += flatten(inner, f"{prefix}.{key}" if prefix else key)
        return pairs
    return [(prefix, text(value) if value != {} else "")]


def resource_rows(resource: dict[str, Any], etag: str | None) -> list[Row]:
    """The rows of C{show TYPE NAME}: id, type, every attribute, every relationship, the ETag."""
    rows = [["id", resource["id"]], ["type", resource["type"]]]
    rows += [[key, value] for key, value in flatten(resource.get("attributes", {}))]
    for name in resource.get("relationships", {}):
        rows.append([f"relationships.{name}", _related(name)(resource)])
    if etag is not None:
        rows.append(["etag", etag])
    return rows


class Printer:
    """
    Prints results in the format chosen: C{"table"}, C{"tsv"} or C{"json"}.
    """

    def __init__(self, format: str) -> None:
        self.format = format
        self.console = Console(highlight=False, soft_wrap=False)

    def table(self, headings: Row, rows: list[Row]) -> None:
        """Rows under headings (C{--tsv}: the rows only, tab-separated, as maxctrl does)."""
        if self.format == "tsv":
            for row in rows:
                sys.stdout.write("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row) + "\n")
            return
        table = Table(box=box.ROUNDED, header_style="bold")
        for heading in headings:
            table.add_column(heading, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.console.print(table)

    def raw(self, body: bytes) -> None:
        """The API's answer as it came."""
        sys.stdout.write(body.decode("utf-8", "replace"))
        if not body.endswith(b"\n"):
            sys.stdout.write("\n")

    def message(self, line: str) -> None:
        """A line saying what was done (not under C{--json}, which prints documents only)."""
        if self.format != "json":
            sys.stdout.write(line + "\n")
