"""
Decoding untrusted TOML and JSON text with bounds, so that no input can
make the decoder or what comes after it recurse, or convert a number so
long that it takes noticeable time: the configuration file, the state file
and the admin API's request bodies all go through here.

 - nesting (arrays and tables or objects inside each other) is at most
   L{MAX_DEPTH} levels deep: JSON is measured before it is decoded, TOML
   (whose decoder is pure Python and stops at the interpreter's recursion
   limit) after, with a recursion error reported as the same problem;
 - an integer has at most L{MAX_DIGITS} digits;
 - JSON's C{NaN} and C{Infinity}, which Python accepts and RFC 8259 does
   not, are refused.

Each problem is a L{DecodeError} whose message is one line.
"""

from __future__ import annotations

import json
import re
import tomllib
from itertools import accumulate
from typing import Any

#: The deepest nesting accepted: C{[[1]]} is 2 levels deep, C{{"a": {}}} is 2.
MAX_DEPTH = 64

#: The most digits an integer may have.  Every integer of the schema is
#: below 10**10; this only keeps the conversion of a number cheap.
MAX_DIGITS = 32

#: A JSON string, or an unterminated one up to the end (so a match never fails
#: after scanning: no quadratic retries on C{"\\"\\"\\"...}).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LARGEST = 10**MAX_DIGITS
_SURROGATE_PROBLEM = "a string holds a lone surrogate (\\ud800 to \\udfff), which is not Unicode text"


class DecodeError(ValueError):
    """Text that is not valid TOML or JSON, or goes over a bound; the message says which."""


def json_depth(text: str) -> int:
    """
    How deeply the arrays and objects of JSON C{text} nest (0 for a
    scalar), measured without decoding it and without recursion, in time
    linear in its length (about 50 ms for 1 MiB of brackets).

    For text that is not JSON the figure is only an upper bound of how deep
    a decoder could go before it finds the error, which is what matters here.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise DecodeError(f"a number has more than {MAX_DIGITS} digits ({digits[:20]}...)")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not a JSON number")


def loads_json(text: str) -> Any:
    """
    Decode JSON C{text} within the bounds of this module.

    @raise DecodeError: naming what is wrong (for syntax errors, where).
    """
    if json_depth(text) > MAX_DEPTH:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        decoded = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except DecodeError:
        raise
    except RecursionError:  # not expected after the depth check; kept as a last guard
        raise DecodeError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:
        raise DecodeError(str(e)) from None
    if _SURROGATE_ESCAPE.search(text) or _SURROGATE.search(text):
        try:
            json.dumps(decoded, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError(_SURROGATE_PROBLEM) from None
    return decoded


def loads_toml(text: str) -> dict[str, Any]:
    """
    Decode TOML C{text} within the bounds of this module.

    @raise DecodeError: naming what is wrong (for syntax errors, where).
    """
    try:
        decoded = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DecodeError(str(e)) from None
    except RecursionError:
        raise DecodeError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:  # an integer past the interpreter's digit limit
        raise DecodeError(f"a number cannot be read: {str(e).split(';')[0]}") from None
    check_value(decoded)
    return decoded


def check_value(value: Any) -> None:
    """
    Check a decoded value against the bounds (nesting depth, digits of
    integers) and for strings that are not Unicode text (JSON's C{"\\ud800"}
    escapes decode to lone surrogates, which cannot be written back as
    UTF-8), without recursion.

    @raise DecodeError: for the first bound it goes over.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth + 1 > MAX_DEPTH:
                raise DecodeError(f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                raise DecodeError(_SURROGATE_PROBLEM)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= _LARGEST:
            raise DecodeError(f"a number has more than {MAX_DIGITS} digits")
