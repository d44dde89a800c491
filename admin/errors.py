"""Errors the API raises about a request itself (as opposed to the balancer's domain errors)."""

from __future__ import annotations


class BadRequest(ValueError):
    """The request cannot be understood (a body that is not JSON, or not a JSON object): 400."""


class Forbidden(Exception):
    """The account may not do this (a C{basic} account writing, or dumping the configuration): 403."""
