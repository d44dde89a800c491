"""Configuration problems: collected while loading, raised together."""

from __future__ import annotations

from typing import Iterator

import attrs


@attrs.frozen
class Problem:
    """One mistake in a configuration: where it is and what was expected."""

    path: str
    message: str

    def render(self, source: str) -> str:
        """Format as C{source: dotted.path: message}."""
        if self.path:
            return f"{source}: {self.path}: {self.message}"
        return f"{source}: {self.message}"


class Problems:
    """An ordered collection of L{Problem}s found in one configuration."""

    def __init__(self) -> None:
        self._items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        """Record that the key at C{path} is wrong, saying why."""
        self._items.append(Problem(path, message))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self._items)


class ConfigError(Exception):
    """
    A configuration could not be used.

    @ivar source: the file (or "request body") the configuration came from.
    @ivar problems: every problem found, in file order.
    """

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def lines(self) -> list[str]:
        """One line per problem, each naming the source and the key path."""
        return [p.render(self.source) for p in self.problems]

    def render(self) -> str:
        """All problems, one per line."""
        return "\n".join(self.lines())
