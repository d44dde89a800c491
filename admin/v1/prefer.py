"""
The C{Prefer} request header (RFC 7240) as /v1 reads it: a successful
C{PATCH}, or a C{POST} that creates, answers C{204 No Content} as MaxScale's
REST API does, unless the client sends C{Prefer: return=representation},
which gets the resource's document (and C{Preference-Applied}).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

#: The preference that asks for the document.
REPRESENTATION = "return=representation"


def wants_representation(request: IRequest) -> bool:
    """Whether any C{Prefer} header of C{request} holds C{return=representation} (value quoted or not)."""
    for header in request.requestHeaders.getRawHeaders(b"Prefer", []):
        for preference in header.decode("latin-1").split(","):
            name, _, value = preference.split(";")[0].partition("=")
            if name.strip().lower() == "return" and value.strip().strip('"').lower() == "representation":
                return True
    return False
