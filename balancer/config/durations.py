"""Go-style duration strings ("2s", "500ms", "1m30s"), as gobetween writes them."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


#: The longest duration accepted, in seconds (365 days): longer ones are
#: mistakes, and past it a number of seconds stops being exact or finite.
MAX_DURATION = 365 * 24 * 3600.0


class DurationError(ValueError):
    """A duration string that does not parse."""


def parse_duration(text: str) -> float:
    """
    Parse a Go duration string into seconds.

    C{"0"} and C{""} are zero (gobetween's way of saying "no timeout").
    A number without a unit, other than 0, a negative duration and one
    over L{MAX_DURATION} (8760h) are refused.

    @raise DurationError: naming the bad text and the expected form.
    """
    stripped = text.strip()
    if stripped in ("", "0"):
        return 0.0
    position = 0
    total = 0.0
    for match in _PART.finditer(stripped):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(stripped) or position == 0:
        raise DurationError(
            f'expected a duration like "2s", "500ms" or "1m30s" '
            f'(units ns, us, ms, s, m, h), got "{_shown(text)}"'
        )
    if total > MAX_DURATION:
        raise DurationError(f'expected a duration of at most 8760h (365 days), got "{_shown(text)}"')
    return total


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def format_duration(seconds: float) -> str:
    """Write seconds back as the shortest exact Go duration string."""
    if seconds == 0:
        return "0"
    millis = round(seconds * 1000)
    if abs(millis - seconds * 1000) > 1e-6:
        return f"{round(seconds * 1e6)}us"
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{whole}s"
