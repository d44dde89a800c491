"""
A real etcd (Debian's C{etcd-server}) for a test: one member on 127.0.0.1
with ports picked for it, a temporary data directory, stopped by pid when
the test ends.  L{Etcd.stop} and L{Etcd.start} take it away and bring it
back on the same ports with the same data.  Options: extra client
addresses (the host side of network namespaces), a user and password
(authentication enabled), TLS with a test CA (and client certificates),
automatic compaction (off by default, so tests compact when they mean to).

    etcd = await started_etcd(self)
    store = EtcdGateway(reactor, [etcd.endpoint])
    self.addCleanup(store.close)
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from base64 import b64encode
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.support.certs import Authority, Pair
from tests.support.paths import scratch_directory
from tests.support.ports import free_port
from tests.support.processes import WatchedProcess
from tests.support.tools import require_tool

#: How long etcd may take to start serving, in seconds.
START_TIMEOUT = 30.0


class Etcd:
    """
    One etcd member for C{test}; L{start} runs it, L{stop} ends it.

    @ivar client_port: the port it serves clients on, on every client host.
    @ivar client_hosts: the addresses it serves clients on (127.0.0.1 first).
    @ivar endpoint: its client URL on 127.0.0.1.
    @ivar user: the user (C{root}) when authentication is on, else None.
    @ivar password: that user's password.
    @ivar ca_path: with TLS, the CA that signs its certificate.
    @ivar client_pair: with client certificates, a certificate and key it accepts.
    @ivar process: the running etcd (None when stopped).
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        *,
        extra_client_hosts: Sequence[str] = (),
        password: str | None = None,
        tls: bool = False,
        client_certificates: bool = False,
        auto_compaction_retention: str = "0",
    ) -> None:
        """
        @param extra_client_hosts: more addresses to serve clients on (they must exist on this host).
        @param password: enable authentication, with user C{root} and this password.
        @param tls: serve clients over HTTPS with a certificate from a test CA.
        @param client_certificates: with C{tls}, require a client certificate from that CA.
        @param auto_compaction_retention: etcd's C{--auto-compaction-retention} (C{"0"}: off).
        """
        self.executable = require_tool("etcd", "etcd-server")
        self._test = test
        self.directory = scratch_directory(test)
        self.data_dir = os.path.join(self.directory, "data")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.client_hosts = ("127.0.0.1", *extra_client_hosts)
        self.scheme = "https" if tls else "http"
        self.endpoint = self.endpoint_on("127.0.0.1")
        self.user = "root" if password is not None else None
        self.password = password
        self._auto_compaction = auto_compaction_retention
        self.ca_path: str | None = None
        self.client_pair: Pair | None = None
        self._server_pair: Pair | None = None
        self._client_certificates = client_certificates
        if tls:
            authority = Authority("etcd test CA")
            self.ca_path = authority.write(self.directory, "etcd-ca")
            self._server_pair = authority.issue(
                self.directory, "etcd-server", ips=self.client_hosts, also_client=client_certificates
            )
            if client_certificates:
                self.client_pair = authority.issue(self.directory, "etcd-client", hostnames=("root",), ips=(), client=True)
        self.process: WatchedProcess | None = None
        self._auth_enabled = False
        test.addCleanup(self.stop)

    def endpoint_on(self, host: str) -> str:
        """Its client URL on C{host} (one of L{client_hosts})."""
        return f"{self.scheme}://{host}:{self.client_port}"

    def argv(self) -> list[str]:
        """The command line that runs it."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.executable,
            "--name", "test",
            "--data-dir", self.data_dir,
            "--listen-client-urls", ",".join(self.endpoint_on(host) for host in self.client_hosts),
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            "--initial-cluster-state", "new",
            "--auto-compaction-retention", self._auto_compaction,
        ]  # fmt: skip
        if self._server_pair is not None:
            argv += ["--cert-file", self._server_pair.cert_path, "--key-file", self._server_pair.key_path]
            if self._client_certificates:
                assert self.ca_path is not None
                argv += ["--client-cert-auth", "--trusted-ca-file", self.ca_path]
        return argv

    def start(self) -> Deferred[None]:
        """Run etcd; fires once it serves clients (and has authentication on, if asked), within L{START_TIMEOUT}."""
        assert self.process is None, "etcd is already running"
        process = self.process = WatchedProcess(b"ready to serve client requests")
        argv = self.argv()
        reactor.spawnProcess(process, argv[0], argv, env={"PATH": os.environ.get("PATH", "")}, path=self.directory)
        marker = rb"serving (insecure )?client requests on 127\.0\.0\.1:" + str(self.client_port).encode()
        ready = process.wait_for(marker, START_TIMEOUT)
        return Deferred.fromCoroutine(self._ready(ready))

    async def _ready(self, ready: Deferred[Any]) -> None:
        await ready
        if self.password is not None and not self._auth_enabled:
            await deferToThread(self._enable_auth)
            self._auth_enabled = True

    def stop(self) -> Deferred[None]:
        """End etcd (SIGTERM to its pid) and wait for it to exit; nothing when it is not running."""
        process, self.process = self.process, None
        if process is None or process.ended.called:
            return succeed(None)
        return process.stop().addCallback(lambda _: None)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A standard library TLS context that trusts it (and presents the client certificate), or None without TLS."""
        if self.ca_path is None:
            return None
        context = ssl.create_default_context(cafile=self.ca_path)
        if self.client_pair is not None:
            context.load_cert_chain(self.client_pair.cert_path, self.client_pair.key_path)
        return context

    def post_now(self, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """POST C{body} to its JSON gateway and return the answer (blocks: call it in a thread)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        request = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as answer:
            return dict(json.loads(answer.read()))

    def _enable_auth(self) -> None:
        self.post_now("/v3/auth/user/add", {"name": self.user, "password": self.password})
        self.post_now("/v3/auth/user/grant", {"user": self.user, "role": "root"})
        self.post_now("/v3/auth/enable", {})

    def compact(self, revision: int) -> Deferred[None]:
        """Compact its history up to C{revision} (physically: done when this fires)."""

        def compact() -> None:
            token = None
            if self.password is not None:
                token = self.post_now("/v3/auth/authenticate", {"name": self.user, "password": self.password})["token"]
            self.post_now("/v3/kv/compaction", {"revision": str(revision), "physical": True}, token)

        return deferToThread(compact)

    def put_now(self, key: str, value: bytes) -> Deferred[int]:
        """Write C{key} directly (not through the client under test); fires with the revision."""

        def put() -> int:
            body = {"key": b64encode(key.encode()).decode(), "value": b64encode(value).decode()}
            token = None
            if self.password is not None:
                token = self.post_now("/v3/auth/authenticate", {"name": self.user, "password": self.password})["token"]
            return int(self.post_now("/v3/kv/put", body, token)["header"]["revision"])

        return deferToThread(put)


async def started_etcd(test: SynchronousTestCase, **options: Any) -> Etcd:
    """An L{Etcd} for C{test}, started (see L{Etcd.__init__} for C{options}); stopped when the test ends."""
    etcd = Etcd(test, **options)
    await etcd.start()
    return etcd
