"""
L{admin.listener}: where the API listens, what it logs, how
it fails to start, and its place in the twistd service tree.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from admin.listener import ApiService, api_service, tls_options
from balancer.config.load import parse_config
from balancer.config.schema import ApiConfig, ApiTlsConfig
from balancer.listening import BindError
from balancer.tap import build_service
from tests.support.certs import self_signed
from tests.support.paths import scratch_directory
from tests.support.reactors import ListeningReactor

SERVER = b"""
[servers.web]
bind = "127.0.0.1:3000"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001"]
"""


def api_config(text: str) -> ApiConfig:
    """The C{[api]} of a configuration whose C{[api]} section holds C{text}."""
    return parse_config(b"[api]\nenabled = true\n" + text.encode() + b"\n" + SERVER, "test.toml").api


class ApiServiceTests(SynchronousTestCase):
    """The service listens on C{[api] bind}, plain or TLS, and logs the address."""

    def test_listensOnBindAndLogsTheAddress(self) -> None:
        memory = MemoryReactorClock()
        service = api_service(None, api_config('bind = "127.0.0.1:8080"'), memory)  # type: ignore[arg-type]
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        self.assertEqual([(port, interface) for port, _, _, interface in memory.tcpServers], [(8080, "127.0.0.1")])
        messages = [e["log_format"].format(**e) for e in events if e.get("log_namespace") == "balancer.listening"]
        self.assertEqual(messages, ["api: listening on 0.0.0.0:8080"])

    def test_emptyHostIsEveryInterface(self) -> None:
        memory = MemoryReactorClock()
        api_service(None, api_config('bind = ":8888"'), memory).startService()  # type: ignore[arg-type]
        self.assertEqual([(port, interface) for port, _, _, interface in memory.tcpServers], [(8888, "0.0.0.0")])

    def test_tlsListensWithTheCertificate(self) -> None:
        directory = scratch_directory(self)
        cert, key, _ = self_signed(directory)
        memory = MemoryReactorClock()
        config = api_config(f'bind = "127.0.0.1:8443"\n[api.tls]\ncert_path = "{cert}"\nkey_path = "{key}"')
        api_service(None, config, memory).startService()  # type: ignore[arg-type]
        self.assertEqual(memory.tcpServers, [])
        [(port, _, options, _, interface)] = memory.sslServers
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        self.assertIsNotNone(options.getContext())

    def test_bindFailureIsBindError(self) -> None:
        service = api_service(None, api_config('bind = "127.0.0.1:8080"'), ListeningReactor(taken=(8080,)))  # type: ignore[arg-type]
        with self.assertRaises(BindError) as caught:
            service.privilegedStartService()
        self.assertEqual(str(caught.exception),
                         "api: cannot listen on 127.0.0.1:8080: [Errno 98] Address already in use")

    def test_stopClosesTheListener(self) -> None:
        memory = ListeningReactor()
        service = api_service(None, api_config('bind = "127.0.0.1:8080"'), memory)  # type: ignore[arg-type]
        service.startService()
        self.assertEqual(memory.listening(), [8080])
        self.successResultOf(service.stopService())
        self.assertEqual(memory.listening(), [])


class TlsOptionsTests(SynchronousTestCase):
    """C{[api.tls]} files: a chain after the certificate, and clear errors."""

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.cert, self.key, self.pem = self_signed(self.directory)

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_chainAfterTheCertificate(self) -> None:
        chain = self.write("chain.pem", self.pem + self.pem)
        options = tls_options(ApiTlsConfig(cert_path=chain, key_path=self.key))
        self.assertEqual(len(options.extraCertChain), 1)

    def test_missingFile(self) -> None:
        missing = os.path.join(self.directory, "missing.pem")
        with self.assertRaises(BindError) as caught:
            tls_options(ApiTlsConfig(cert_path=self.cert, key_path=missing))
        self.assertEqual(str(caught.exception), f'api.tls.key_path: cannot read "{missing}": No such file or directory')

    def test_noCertificate(self) -> None:
        empty = self.write("empty.pem", b"")
        with self.assertRaises(BindError) as caught:
            tls_options(ApiTlsConfig(cert_path=empty, key_path=self.key))
        self.assertEqual(str(caught.exception), f'api.tls.cert_path: "{empty}" holds no PEM certificate')

    def test_keyOfAnotherCertificate(self) -> None:
        other = os.path.join(self.directory, "other")
        os.makedirs(other)
        _, other_key, _ = self_signed(other)
        with self.assertRaises(BindError) as caught:
            tls_options(ApiTlsConfig(cert_path=self.cert, key_path=other_key))
        self.assertEqual(str(caught.exception),
                         f'api.tls.key_path: "{other_key}" is not the key of the certificate in "{self.cert}"')


class TreeTests(SynchronousTestCase):
    """build_service adds the API when C{[api] enabled}, after the balancer."""

    def test_apiChildWhenEnabled(self) -> None:
        config = parse_config(b'[api]\nenabled = true\nbind = "127.0.0.1:8888"\n' + SERVER, "test.toml")
        memory = MemoryReactorClock()
        root = build_service(config, memory)
        self.assertIsInstance(root.getServiceNamed("api"), ApiService)
        self.assertEqual([s.name for s in root], ["balancer", "reload", "api"])
        root.privilegedStartService()
        self.assertEqual([port for port, _, _, _ in memory.tcpServers], [3000, 8888])

    def test_noApiWhenDisabled(self) -> None:
        root = build_service(parse_config(SERVER, "test.toml"), MemoryReactorClock())
        self.assertEqual([s.name for s in root], ["balancer", "reload"])
