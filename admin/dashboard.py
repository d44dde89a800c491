"""
The dashboard's files (C{GET /ui/}): a page, its script and its style,
package data under C{admin/ui/}, served as they are but for the page, which
names the account that loads it (the script shows the buttons to an
C{admin} account only; the API refuses a C{basic} account's writes anyway).

Every answer forbids framing and sniffing, and its C{Content-Security-Policy}
lets the page load its own files and call its own API only: no inline
script, nothing from elsewhere.
"""

from __future__ import annotations

from importlib.resources import files

from twisted.web.iweb import IRequest

from admin.auth import Account

#: The files under C{/ui/}, by name: their media type.
ASSETS = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}

#: What the page may load and call.
POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

#: Where C{index.html} names the account.
ACCOUNT_MARK = b'data-account=""'


class UnknownAsset(LookupError):
    """No dashboard file of that name."""


def asset(name: str, account: Account) -> tuple[bytes, bytes]:
    """
    (media type, content) of dashboard file C{name} (C{index.html} for the
    page) as account C{account} sees it.

    @raise UnknownAsset: for a name that is not one of L{ASSETS}.
    """
    if name not in ASSETS:
        raise UnknownAsset(name)
    content = files("admin").joinpath("ui", name).read_bytes()
    if name == "index.html":
        content = content.replace(ACCOUNT_MARK, b'data-account="' + account.value.encode("ascii") + b'"', 1)
    return ASSETS[name], content


def serve(request: IRequest, name: str, account: Account) -> bytes:
    """Answer C{request} with dashboard file C{name} (see L{asset}), with the headers every dashboard answer has."""
    content_type, content = asset(name, account)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"Content-Security-Policy", POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    return content
