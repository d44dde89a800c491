"""Reading a Prometheus scrape (text format) in tests."""

from __future__ import annotations


def samples(body: str) -> dict[str, float]:
    """The samples of a scrape, by name with labels."""
    found = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found
