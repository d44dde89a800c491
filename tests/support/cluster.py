"""
Balancers of one cluster in child processes (C{twistd -n balancer} with a
C{[cluster]} section) for integration tests: each with its API, a state
file (its copy of the shared state) and server "web" in front of the
backends the test gives; API calls with treq; the shared state read from
etcd directly to check what was written.

    etcd = await started_etcd(self)
    members = Members(self, etcd)
    a = await members.start("a")
    response, body = await a.call("GET", "/v1/cluster")
"""

from __future__ import annotations

import json
import os
from base64 import b64encode
from typing import Any, Sequence

import attrs
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.etcd import Etcd
from tests.support.paths import scratch_directory
from tests.support.processes import WatchedProcess, spawn_balancer, twistd_path, source_env
from tests.support.waiting import polled

#: A member's configuration: its API on C{{api_host}} (port 0), the
#: cluster, its state file, and server "web" on C{{web_bind}} in front of C{{backends}}.
CONFIG = """
[api]
enabled = true
bind = "{api_host}:0"
[api.basic_auth]
login = "admin"
password = "{password}"

[cluster]
etcd_endpoints = [{endpoints}]
cluster_name = "test"
instance = "{name}"
lease_ttl = "{lease_ttl}"
etcd_timeout = "1s"
{cluster_extra}

[state]
path = "{state}"

[servers.web]
bind = "{web_bind}"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = [{backends}]
{extra}
"""


#: The members' API account (writes from another host need one).
PASSWORD = "cluster-secret"
AUTHORIZATION = "Basic " + b64encode(f"admin:{PASSWORD}".encode()).decode()


@attrs.define
class Member:
    """One running balancer of the cluster: its process, its API port, and a treq client."""

    name: str
    process: WatchedProcess
    api_host: str
    api_port: int
    config_path: str
    http: HTTPClient

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[bytes | str, bytes | str] | None = None) -> tuple[Any, Any]:
        """One API request (JSON C{body} if given): (response, decoded JSON body, or the bytes when not JSON)."""
        all_headers: dict[bytes | str, bytes | str] = {"Accept": "application/json", "Authorization": AUTHORIZATION,
                                                       **(headers or {})}
        data = None
        if body is not None:
            all_headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        url = f"http://{self.api_host}:{self.api_port}{path}"
        response = await self.http.request(method, url, data=data, headers=all_headers)
        raw = await response.content()
        content_type = response.headers.getRawHeaders(b"Content-Type", [b""])[0]
        return response, json.loads(raw) if content_type.startswith(b"application/json") and raw else raw

    async def get(self, path: str) -> Any:
        """The JSON document at C{path} (asserting 200)."""
        response, body = await self.call("GET", path)
        assert response.code == 200, (path, response.code, body)
        return body

    def port_of(self, server: str) -> Deferred[int]:
        """The port server C{server} listens on, from the log."""
        return self.process.listening_port(server)

    def stop(self) -> Deferred[tuple[int | None, int | None]]:
        """SIGTERM, and wait for the exit."""
        return self.process.stop()


class Members:
    """Starts members of one cluster for a test; each stopped when the test ends."""

    def __init__(self, test: TestCase, etcd: Etcd, backends: Sequence[str] = (), *, lease_ttl: str = "3s",
                 extra: str = "", cluster_extra: str = "") -> None:
        """
        @param backends: C{host:port} of server "web"'s static backends.
        @param extra: more configuration (sections) for every member.
        @param cluster_extra: more C{[cluster]} lines for every member.
        """
        self._test = test
        self._etcd = etcd
        self._directory = scratch_directory(test)
        self._backends = list(backends)
        self._lease_ttl = lease_ttl
        self._extra = extra
        self._cluster_extra = cluster_extra
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def write_config(self, name: str, *, api_host: str = "127.0.0.1", web_bind: str = "127.0.0.1:0",
                     endpoint: str | None = None) -> str:
        """Member C{name}'s configuration file (written once; the same on a restart)."""
        path = os.path.join(self._directory, f"{name}.toml")
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as f:
                f.write(CONFIG.format(
                    api_host=api_host, password=PASSWORD, endpoints=json.dumps(endpoint or self._etcd.endpoint), name=name,
                    lease_ttl=self._lease_ttl, state=os.path.join(self._directory, f"{name}.state.toml"),
                    web_bind=web_bind, backends=", ".join(json.dumps(b) for b in self._backends), extra=self._extra,
                    cluster_extra=self._cluster_extra))
        return path

    async def start(self, name: str, *, netns: Any = None, api_host: str = "127.0.0.1",
                    web_bind: str = "127.0.0.1:0", endpoint: str | None = None) -> Member:
        """
        Start member C{name} (again, with the same files, if it ran before);
        fires once its API listens.

        @param netns: a namespace (L{tests.support.netns}) to run it in; its
            API then listens on C{api_host}, an address of the namespace.
        """
        path = self.write_config(name, api_host=api_host, web_bind=web_bind, endpoint=endpoint)
        if netns is None:
            process = spawn_balancer(self._test, path)
        else:
            process = WatchedProcess(b"api: listening on")
            argv = netns.argv(twistd_path(), "-n", "--pidfile=", "balancer", "--config", path)
            reactor.spawnProcess(process, argv[0], argv, env=source_env(), path=self._directory)
            self._test.addCleanup(process.stop)
        pattern = rb"api: listening on " + api_host.encode().replace(b".", rb"\.") + rb":(\d+)"
        match = await process.wait_for(pattern, 30)
        return Member(name, process, api_host, int(match.group(1)), path, self.http)


def members_of(cluster: Any) -> list[str]:
    """The instance names in a C{GET /v1/cluster} document."""
    return sorted(m["instance"] for m in cluster["data"]["attributes"]["members"])


async def until_member(member: Member, path: str, done: Any, what: str, timeout: float = 10.0) -> Any:
    """
    The first document at C{path} on C{member} for which C{done} holds
    (polled every 20 ms; an answer other than 200 is not it yet).
    """

    async def fetch() -> Any:
        response, body = await member.call("GET", path)
        return body if response.code == 200 else None

    return await polled(lambda: Deferred.fromCoroutine(fetch()), lambda d: d is not None and done(d), timeout, what,
                        step=0.02)
