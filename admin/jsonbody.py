"""
Request bodies of the admin API read as JSON, with bounds checked before
any work is done on them: at most L{MAX_BODY} bytes (the HTTP layer refuses
longer bodies before they arrive; this holds whatever the request class),
nesting at most 64 levels deep, integers of at most 32 digits, no C{NaN}
and no lone surrogates (L{balancer.config.decode}).  Both APIs read their
bodies here and turn L{BodyError} into their own error documents.
"""

from __future__ import annotations

from typing import IO, Any

from balancer.config.decode import DecodeError, loads_json

#: The largest request body the API takes, in bytes (1 MiB); L{admin.request} refuses longer ones.
MAX_BODY = 1 << 20


class BodyError(ValueError):
    """
    A body that cannot be used as JSON; the message says why.

    @ivar code: 413 for a body over L{MAX_BODY} bytes, 400 otherwise.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_json(content: IO[bytes] | None) -> Any:
    """
    The JSON value of a request body.

    @raise BodyError: 413 if it is over L{MAX_BODY} bytes; 400 if it is not
        UTF-8 JSON, or goes over a bound of L{balancer.config.decode}.
    """
    data = content.read(MAX_BODY + 1) if content is not None else b""
    if len(data) > MAX_BODY:
        raise BodyError(413, f"the body is over {MAX_BODY} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(400, f"the body is not JSON: not UTF-8 (byte {e.start})") from None
    try:
        return loads_json(text)
    except DecodeError as e:
        raise BodyError(400, f"the body is not JSON: {e}") from None
