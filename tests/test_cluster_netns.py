"""
A shared server with a C{bind}: three balancers of one cluster, each in a
network namespace of its own (its own loopback, so the same address on
each), reaching one etcd on the host through a veth pair.  A server created
through one balancer's API listens on all three within a second and relays
to each namespace's own backend.  Needs root (skipped with a reason where
namespaces cannot be made; a failure under C{CI=true}).
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.support.cluster import Members
from tests.support.etcd import started_etcd
from tests.support.netns import Namespace, make_namespaces
from tests.support.ports import free_port
from tests.support.processes import WatchedProcess, source_env

#: Answers every connection to 127.0.0.1:PORT (argv[1]) with NAME (argv[2]), then closes; says "ready".
NAMED_BACKEND = """
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    client, _ = server.accept()
    client.sendall(sys.argv[2].encode())
    client.close()
"""

#: Connects to 127.0.0.1:PORT (argv[1]) and prints what it receives, until the peer closes.
CLIENT = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
    data = b""
    while chunk := s.recv(4096):
        data += chunk
print("got", data.decode(), flush=True)
"""


def run_in(test: TestCase, namespace: Namespace, script: str, *args: str, marker: bytes) -> WatchedProcess:
    """Run a Python C{script} inside C{namespace}; stopped when the test ends."""
    process = WatchedProcess(marker)
    argv = namespace.argv(sys.executable, "-c", script, *args)
    reactor.spawnProcess(process, argv[0], argv, env=source_env())  # type: ignore[attr-defined]
    test.addCleanup(lambda: process.stop() if not process.ended.called else None)
    return process


class SharedBindTests(TestCase):
    """One server definition, bound by every member on its own host."""

    timeout = 120

    async def test_aServerPostedToOneListensOnAllWithinASecond(self) -> None:
        namespaces = make_namespaces(self, 3)
        etcd = await started_etcd(self, extra_client_hosts=[ns.host_address for ns in namespaces])
        backend_port, shared_port = free_port(), free_port()
        for namespace in namespaces:
            backend = run_in(self, namespace, NAMED_BACKEND, str(backend_port), namespace.name, marker=b"ready")
            await backend.seen
        members = Members(self, etcd, [f"127.0.0.1:{backend_port}"])
        started = []
        for name, namespace in zip("abc", namespaces):
            started.append(await members.start(name, netns=namespace, api_host=namespace.address,
                                               endpoint=etcd.endpoint_on(namespace.host_address)))
        definition = {"bind": f"127.0.0.1:{shared_port}",
                      "discovery": {"kind": "static", "static_list": [f"127.0.0.1:{backend_port}"]}}
        response, body = await started[0].call("POST", "/servers/shared", definition)
        self.assertEqual(response.code, 200, body)
        posted = reactor.seconds()  # type: ignore[attr-defined]
        listening = rb"shared: listening on 127\.0\.0\.1:" + str(shared_port).encode()
        for member in started[1:]:
            await member.process.wait_for(listening, 5)
        self.assertLess(reactor.seconds() - posted, 1.0)  # type: ignore[attr-defined]
        for namespace in namespaces:
            client = run_in(self, namespace, CLIENT, str(shared_port), marker=b"got")
            await client.ended
            self.assertIn(f"got {namespace.name}".encode(), client.output)
