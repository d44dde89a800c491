"""
C{/v1/users/inet}: the API's accounts, from C{[api.basic_auth]} (an admin)
and C{[[api.users]]}, with their kind (C{admin} reads and writes, C{basic}
only reads).  Accounts come from the configuration file: they are listed
here, not created or deleted (405).  Passwords never appear.
"""

from __future__ import annotations

from typing import Any

from admin.v1 import documents
from admin.v1.kind import Kind


class Users(Kind):
    """Network (HTTP Basic) accounts: type C{inet}, as in MaxScale."""

    type = "inet"
    shared_as = None

    def collection_path(self) -> str:
        return documents.path("users", "inet")

    def member_path(self, id: str) -> str:
        return documents.path("users", "inet", id)

    def _accounts(self) -> dict[str, dict[str, Any]]:
        api = self.control.effective_config().api
        found = {}
        if api.basic_auth is not None:
            found[api.basic_auth.login] = {"account": "admin", "origin": "api.basic_auth"}
        for user in api.users:
            found[user.login] = {"account": user.account, "origin": "api.users"}
        return found

    def members(self) -> list[dict[str, Any]]:
        return [documents.resource(self.type, id, account, self_link=self.member_path(id))
                for id, account in self._accounts().items()]

    def get(self, id: str) -> dict[str, Any]:
        accounts = self._accounts()
        if id not in accounts:
            raise self.missing(id)
        return documents.resource(self.type, id, accounts[id], self_link=self.member_path(id))

    def changed_at(self, id: str) -> float:
        return self.control.info().started_at

    def collection_changed_at(self) -> float:
        return self.control.info().started_at
