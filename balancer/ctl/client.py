"""
The blocking HTTP client of balancerctl (the standard library's
C{urllib}: one request at a time is all a command line needs): JSON
requests to the admin API with basic authentication and HTTPS options,
and the API's errors as L{ApiFailure}.
"""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

#: How long one request may take, in seconds.
TIMEOUT = 30.0


class CtlError(Exception):
    """A failure to tell the operator in one line (exit status 1)."""


class ApiFailure(CtlError):
    """
    The API answered with an error.

    @ivar status: the HTTP status code.
    @ivar detail: the C{detail} of each of its errors, joined.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Response:
    """
    One answer: C{status}, C{headers} (lower-case names) and C{body} (bytes).
    """

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def document(self) -> Any:
        """
        The body as JSON (None when empty).

        @raise CtlError: it is not JSON (C{--url} names something else than the API).
        """
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise CtlError(f"the answer is not JSON (is --url the balancer's API?): {self.body[:80]!r}") from None

    @property
    def etag(self) -> str | None:
        """The C{ETag} of the answer."""
        return self.headers.get("etag")


class Client:
    """
    The admin API at C{url}.

    @param user: the login for basic authentication (None: none sent).
    @param ca: a PEM file of the certificates to trust for HTTPS (None: the system's).
    @param insecure: do not check the HTTPS certificate at all.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None,
                 ca: str | None = None, insecure: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CtlError(f'--url must be an http:// or https:// URL, got "{url}"')
        self.url = url.rstrip("/")
        self.authorization: str | None = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode("utf-8")).decode("ascii")
            self.authorization = f"Basic {token}"
        self.context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            try:
                self.context = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as e:
                raise CtlError(f'--ca "{ca}": {e}') from None
            if insecure:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Response:
        """
        Send one request (C{body}, if given, as JSON); returns the answer.

        @raise ApiFailure: the API answered 4xx or 5xx.
        @raise CtlError: the API could not be reached.
        """
        all_headers = {"Accept": "application/json, */*;q=0.1", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        if self.authorization is not None:
            all_headers["Authorization"] = self.authorization
        request = Request(self.url + path, data=data, headers=all_headers, method=method)
        try:
            with urlopen(request, timeout=TIMEOUT, context=self.context) as answer:
                return Response(answer.status, _headers(answer.headers), answer.read())
        except HTTPError as e:
            raise ApiFailure(e.code, error_detail(e.code, e.read(), e.headers.get("Content-Type", ""))) from None
        except (URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CtlError(f"cannot reach the API at {self.url}: {reason}") from None


def _headers(message: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in message.items()}


def error_detail(status: int, body: bytes, content_type: str) -> str:
    """The C{detail} of each error of a JSON:API error document (or the body, or the status)."""
    text = body.decode("utf-8", "replace").strip()
    if content_type.startswith("application/json"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("errors"), list):
            details = [str(e.get("detail", "")) for e in document["errors"] if isinstance(e, dict)]
            if any(details):
                return "; ".join(d for d in details if d)
        if isinstance(document, str):
            return document
    return text or f"HTTP {status}"
