"""
The small declarative engine behind the configuration schema.

Each attribute of a schema class is declared with L{setting}, which records how
its raw TOML/JSON value is parsed and checked.  L{build} walks a raw mapping
against such a class, collecting every problem in an L{Problems} list instead
of stopping at the first one, so an operator sees all mistakes of a file at once.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, TypeVar

import attrs

from balancer.config.durations import DurationError, format_duration, parse_duration
from balancer.config.errors import Problems

#: Marker returned by a parser whose input was wrong (the problem is recorded).
INVALID: Any = object()

Parser = Callable[[object, str, Problems], Any]

_PARSE = "balancer.parse"
_ALIASES = "balancer.aliases"
_DOC = "balancer.doc"

T = TypeVar("T", bound=attrs.AttrsInstance)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def setting(
    default: Any = attrs.NOTHING,
    *,
    parse: Parser,
    aliases: tuple[str, ...] = (),
    doc: str = "",
    factory: Callable[[], Any] | None = None,
) -> Any:
    """
    Declare one configuration key of a schema class.

    @param default: the value used when the key is absent.
    @param parse: turns the raw value into the attribute's value, or returns
        L{INVALID} after recording a problem.
    @param aliases: other key names accepted for the same setting.
    @param doc: one line for the operator, used in error hints.
    """
    metadata = {_PARSE: parse, _ALIASES: aliases, _DOC: doc}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


@attrs.frozen
class Reversible:
    """
    A parser whose parsed value is not written back to TOML as it is.

    @ivar parse: the L{Parser}.
    @ivar write_back: turns a parsed value into the raw value that parses to it.
    """

    parse: Parser
    write_back: Callable[[Any], Any]

    def __call__(self, value: object, path: str, problems: Problems) -> Any:
        return self.parse(value, path, problems)


def write_back(f: "attrs.Attribute[Any]") -> Callable[[Any], Any] | None:
    """How the value of the schema attribute C{f} is written back to TOML, if not as is."""
    parser = f.metadata.get(_PARSE)
    return parser.write_back if isinstance(parser, Reversible) else None


def join(path: str, key: str) -> str:
    """
    Return the dotted key path of C{key} inside C{path}; a key that is not a
    bare TOML key is quoted, its control characters escaped (so that an
    error about it stays on one line).
    """
    bare = re.fullmatch(r"[A-Za-z0-9_-]+(\[\d+\])?", key) is not None
    if not bare:
        key = json.dumps(key, ensure_ascii=False)
    return f"{path}.{key}" if path else key


def quoted(text: str) -> str:
    """C{text} in double quotes, its quotes and control characters escaped: one line, as an operator wrote it."""
    return '"' + _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text.replace('"', '\\"')) + '"'


def describe(value: object) -> str:
    """Name a raw value and its type the way an operator wrote it."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**50:
        return "integer of more than 50 digits"
    shown = repr(value)
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, str):
        shown = quoted(value)
    elif isinstance(value, (dict, list)):
        shown = ""
    if len(shown) > 60:
        shown = shown[:57] + '..."'
    return f"{kind} {shown}".strip()


def build(cls: type[T], raw: object, path: str, problems: Problems) -> T | Any:
    """
    Build an instance of the schema class C{cls} from the raw mapping C{raw}.

    Unknown keys, wrong types and bad values are recorded in C{problems} under
    their dotted path; the instance is still built (with defaults in place of
    bad values) so that checks further down can report their own problems.
    After the keys, the class's own C{problems()} method, if any, reports
    cross-key mistakes, but only when every key of this table parsed.
    """
    if not isinstance(raw, Mapping):
        problems.add(path, f"expected a table, got {describe(raw)}")
        return INVALID
    fields = {f.name: f for f in attrs.fields(cls)}
    names = {name: name for name in fields}
    for f in fields.values():
        for alias in f.metadata.get(_ALIASES, ()):
            names[alias] = f.name
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    before = len(problems)
    for key, value in raw.items():
        where = join(path, key)
        name = names.get(key)
        if name is None:
            problems.add(where, f"unknown key; expected one of: {', '.join(sorted(fields))}")
            continue
        if name in given_as:
            problems.add(where, f"set twice, as {given_as[name]!r} and as {key!r}")
            continue
        given_as[name] = key
        parsed = fields[name].metadata[_PARSE](value, where, problems)
        if parsed is not INVALID:
            values[name] = parsed
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in values]
    for name in missing:
        if name not in given_as:
            problems.add(join(path, name), "required key is missing")
    if missing:
        return INVALID
    instance = cls(**values)
    check = getattr(instance, "problems", None)
    if check is not None and len(problems) == before:
        for key, message in check():
            problems.add(join(path, key) if key else path, message)
    return instance


# Parsers: each takes (raw value, dotted path, problems) and returns the
# parsed value or INVALID.


def text(pattern: str | None = None, expected: str = "", *, nul: bool = False) -> Parser:
    """
    A string, optionally matching a regular expression.

    @param nul: whether it may hold a NUL character.  Only payloads may
        (C{probe_send}): a NUL cannot be part of a command, an argument, a
        path or a name, so it would only make every use fail later.
    """

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, str):
            problems.add(path, f"expected a string, got {describe(value)}")
            return INVALID
        if not nul and "\x00" in value:
            problems.add(path, f"must not contain a NUL character (\\u0000), got {describe(value)}")
            return INVALID
        if pattern is not None and not re.fullmatch(pattern, value):
            problems.add(path, f"expected {expected}, got {describe(value)}")
            return INVALID
        return value

    return parse


def regexp() -> Parser:
    """A string that compiles as a Python regular expression."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, str):
            problems.add(path, f"expected a regular expression string, got {describe(value)}")
            return INVALID
        try:
            re.compile(value)
        except re.error as e:
            problems.add(path, f"expected a regular expression, got {describe(value)}: {e}")
            return INVALID
        return value

    return parse


def flag() -> Parser:
    """A boolean (TOML true/false)."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, bool):
            problems.add(path, f"expected true or false, got {describe(value)}")
            return INVALID
        return value

    return parse


#: The most clients at once a server (C{max_connections}) or a backend may
#: take, and the most UDP sessions (C{udp_max_sessions}): a fixed bound,
#: the same on every host, far above what one process can hold.
MAX_CONNECTIONS = 1_000_000

#: The largest count of anything else (datagrams per session, weights, priorities).
MAX_COUNT = 1_000_000_000


def whole(minimum: int, maximum: int) -> Parser:
    """An integer within [minimum, maximum] (every integer of the schema has both bounds)."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"expected an integer, got {describe(value)}")
            return INVALID
        if value < minimum or value > maximum:
            shown = str(value) if abs(value) < 10**20 else "a number of more than 20 digits"
            problems.add(path, f"expected an integer from {minimum} to {maximum}, got {shown}")
            return INVALID
        return value

    return parse


def duration() -> Parser:
    """A duration string such as C{"2s"}, C{"500ms"}, C{"1m30s"}; parsed to seconds."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, str):
            problems.add(path, f'expected a duration string like "2s" or "500ms", got {describe(value)}')
            return INVALID
        try:
            return parse_duration(value)
        except DurationError as e:
            problems.add(path, str(e))
            return INVALID

    return Reversible(parse, format_duration)


def choice(*allowed: str) -> Parser:
    """One of a fixed set of strings."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if value not in allowed or not isinstance(value, str):
            listed = ", ".join(f'"{a}"' for a in allowed)
            problems.add(path, f"expected one of {listed}, got {describe(value)}")
            return INVALID
        return value

    return parse


def texts() -> Parser:
    """An array of strings, parsed to a tuple."""
    return items(text())


def items(each: Parser) -> Parser:
    """An array whose elements are parsed by C{each}, giving a tuple."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, list):
            problems.add(path, f"expected an array, got {describe(value)}")
            return INVALID
        parsed = [each(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        if any(p is INVALID for p in parsed):
            return INVALID
        return tuple(parsed)

    return parse


def section(cls: type[attrs.AttrsInstance]) -> Parser:
    """A nested table described by the schema class C{cls}."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        return build(cls, value, path, problems)

    return parse


#: What a C{[servers.<name>]} name may be.
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
NAME_RULE = "a name is 1 to 64 letters, digits, '_', '-' or '.'"


def named_sections(cls: type[attrs.AttrsInstance], name_pattern: str = NAME_PATTERN) -> Parser:
    """A table of named tables (like C{[servers.<name>]}), parsed to a dict."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, Mapping):
            problems.add(path, f"expected a table of named tables, got {describe(value)}")
            return INVALID
        result = {}
        for name, raw in value.items():
            where = join(path, name)
            if not re.fullmatch(name_pattern, name):
                problems.add(where, NAME_RULE)
                continue
            built = build(cls, raw, where, problems)
            if built is not INVALID:
                result[name] = built
        return result

    return parse

