"""Errors of the /v1 API: each carries its HTTP code and JSON:API error objects."""

from __future__ import annotations

from typing import Any

#: The longest request target the API reads, in bytes (longer: 414).
MAX_URI = 8192

#: The longest single header line, and all header lines together, in bytes (longer: 431).
MAX_HEADER = 8192
MAX_HEADERS = 16384


class ApiError(Exception):
    """
    A request the API answers with an error document.

    @ivar code: the HTTP status code.
    @ivar errors: JSON:API error objects, each with a C{detail} (and maybe a C{source.pointer}).
    @ivar headers: further response headers (name to value).
    """

    def __init__(self, code: int, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.errors = errors if errors is not None else [{"detail": detail}]
        self.headers = headers or {}


def not_found(type_: str, id: str) -> ApiError:
    """404 naming the resource that does not exist."""
    return ApiError(404, f'no {type_} resource with id "{id}"')


def bad_request(detail: str, pointer: str | None = None) -> ApiError:
    """400: the request or its document is malformed."""
    return ApiError(400, detail, errors=[error(detail, pointer)])


def conflict(detail: str) -> ApiError:
    """409: taken, in use, or not possible in the resource's current state."""
    return ApiError(409, detail)


def unprocessable(problems: list[tuple[str, str]]) -> ApiError:
    """422 listing every bad value as (JSON pointer, what is wrong)."""
    errors = [error(detail, pointer) for pointer, detail in problems]
    return ApiError(422, "; ".join(detail for _, detail in problems), errors=errors)


def error(detail: str, pointer: str | None = None) -> dict[str, Any]:
    """One JSON:API error object."""
    if pointer is None:
        return {"detail": detail}
    return {"detail": detail, "source": {"pointer": pointer}}
