"""
C{/metrics} of a real C{twistd -n balancer}: after traffic, health checks,
a drain and a weight override through /v1, every family of docs/metrics.md
is there with plausible values.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support.clients import Double, exchange, serve
from tests.support.paths import scratch_directory
from tests.support.ports import refusing_port
from tests.support.processes import spawn_balancer
from tests.support.scrapes import samples
from tests.support.waiting import polled

#: Families that are there (a C{# TYPE} line) in every scrape.
FAMILIES = (
    "balancer_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
    "process_start_time_seconds", "balancer_backend_admin_state", "balancer_backend_weight",
    "balancer_backend_check_up", "balancer_backend_check_duration_seconds", "balancer_backend_check_timestamp_seconds",
    "balancer_backend_checks_total", "balancer_backend_check_failures_total", "balancer_discovery_fetches_total",
    "balancer_discovery_failures_total", "balancer_discovery_last_success_timestamp_seconds",
    "balancer_server_connect_seconds", "balancer_server_connection_duration_seconds",
)


class MetricsProcessTests(TestCase):
    """One server with a live backend and a refusing one, checked by ping every 0.2s."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = scratch_directory(self)
        self.config = os.path.join(directory, "balancer.toml")
        backend = yield serve(self, Double)
        self.live = f'host="127.0.0.1",port="{backend.getHost().port}",server="web"'
        refusing = refusing_port(self)
        self.down = f'host="127.0.0.1",port="{refusing}",server="web"'
        self.live_id = f"127.0.0.1:{backend.getHost().port}"
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f"""
[api]
enabled = true
bind = "127.0.0.1:0"
[metrics]
enabled = true
bind = "127.0.0.1:0"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["{self.live_id}", "127.0.0.1:{refusing}"]
[servers.web.healthcheck]
kind = "ping"
interval = "200ms"
timeout = "200ms"
fails = 1
passes = 1
""")

    @inlineCallbacks
    def scrape(self) -> Any:
        """Fires with the text of one C{/metrics} scrape."""
        response = yield treq.get(f"http://127.0.0.1:{self.metrics}/metrics", persistent=False)
        text = yield response.text()
        return text

    @inlineCallbacks
    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Fires with (status, decoded JSON or None) of one API request (a change answers its document: C{Prefer})."""
        response = yield treq.request(method, f"http://127.0.0.1:{self.api}{path}", json=body, persistent=False,
                                      headers={"Prefer": "return=representation"})
        content = yield response.content()
        return response.code, json.loads(content) if content else None

    @inlineCallbacks
    def test_familiesAfterTrafficAndHealthChecks(self) -> Any:
        started = time.time()
        process = spawn_balancer(self, self.config)
        self.api = yield process.listening_port("api")
        self.metrics = yield process.listening_port("metrics")
        web = yield process.listening_port("web")
        # Checks are spread over the interval: either backend may be the one checked first.
        text = yield polled(
            self.scrape,
            lambda text: all(samples(text).get(f"balancer_backend_checks_total{{{backend}}}", 0) >= 2
                             for backend in (self.live, self.down)),
            10, "two health checks of each backend", step=0.1,
        )
        for _ in range(5):
            answer = yield exchange(web, b"x" * 100)
            self.assertEqual(answer, b"x" * 200)
        code, body = yield self.call("PATCH", f"/v1/servers/{self.live_id}",
                                     {"data": {"attributes": {"parameters": {"weight": 5}}}})
        self.assertEqual(code, 200, body)
        code, body = yield self.call("PUT", f"/v1/servers/{self.live_id}/set?state=drain")
        self.assertEqual(code, 204, body)
        # Each relay is published once both its sides are closed, which may come just after the client saw its end.
        durations = 'balancer_server_connection_duration_seconds_count{server="web"}'
        text = yield polled(
            self.scrape, lambda text: samples(text).get(durations) == 5,
            10, "the five connections in the duration histogram", step=0.1,
        )
        found = samples(text)
        for family in FAMILIES:
            self.assertIn(f"# TYPE {family} ", text)

        [build] = [name for name in found if name.startswith("balancer_build_info{")]
        self.assertEqual(found[build], 1.0)
        self.assertGreater(found["process_resident_memory_bytes"], 1e6)
        self.assertGreater(found["process_cpu_seconds_total"], 0)
        self.assertGreater(found["process_open_fds"], 3)
        self.assertLessEqual(abs(found["process_start_time_seconds"] - started), 30)

        self.assertEqual(found[f"balancer_backend_connections_total{{{self.live}}}"], 5)
        self.assertEqual(found[f"balancer_backend_weight{{{self.live}}}"], 5)
        self.assertEqual(found[f"balancer_backend_weight{{{self.down}}}"], 1)
        self.assertEqual([found[f'balancer_backend_admin_state{{{self.live},state="{state}"}}']
                          for state in ("active", "drain", "maintenance")], [0, 1, 0])
        self.assertEqual(found[f'balancer_backend_admin_state{{{self.down},state="active"}}'], 1)

        self.assertEqual((found[f"balancer_backend_check_up{{{self.live}}}"],
                          found[f"balancer_backend_check_up{{{self.down}}}"]), (1, 0))
        self.assertEqual(found[f"balancer_backend_live{{{self.down}}}"], 0)
        for backend in (self.live, self.down):
            self.assertGreater(found[f"balancer_backend_checks_total{{{backend}}}"], 1)
            self.assertTrue(0 <= found[f"balancer_backend_check_duration_seconds{{{backend}}}"] < 1)
            self.assertLess(abs(found[f"balancer_backend_check_timestamp_seconds{{{backend}}}"] - time.time()), 5)
        self.assertEqual(found[f"balancer_backend_check_failures_total{{{self.live}}}"], 0)
        self.assertEqual(found[f"balancer_backend_check_failures_total{{{self.down}}}"],
                         found[f"balancer_backend_checks_total{{{self.down}}}"])

        for family in ("connect_seconds", "connection_duration_seconds"):
            # The five exchanges above, published by the data path when each connection ended.
            self.assertEqual(found[f'balancer_server_{family}_count{{server="web"}}'], 5)
            self.assertEqual(found[f'balancer_server_{family}_bucket{{le="+Inf",server="web"}}'], 5)

        discovery = '{kind="static",server="web"}'
        self.assertEqual((found[f"balancer_discovery_fetches_total{discovery}"],
                          found[f"balancer_discovery_failures_total{discovery}"]), (1, 0))
        self.assertTrue(started <= found[f"balancer_discovery_last_success_timestamp_seconds{discovery}"]
                        <= time.time())
