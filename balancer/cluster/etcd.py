"""
L{IKeyValueStore} over etcd's v3 JSON gateway (C{/v3/kv/range},
C{/v3/kv/txn}, C{/v3/watch}, C{/v3/lease/*}, C{/v3/auth/authenticate}),
spoken with treq on the reactor: L{EtcdGateway}.  L{read_prefix_now} reads
a prefix with the standard library, for start-up before the reactor runs.

Why the gateway and not a client library: C{aetcd} runs on asyncio, which
would put the asyncio reactor under the whole process; C{etcd3gw} blocks
(threads only) and cannot stream a watch.  The gateway is plain HTTP with
JSON bodies (keys and values base64), and a watch is one streamed response
of newline-separated JSON objects, read here as it arrives.

Every request is bounded by the gateway's C{timeout}; a connection that
fails or times out moves on to the next endpoint, and the one that answered
is tried first next time.  A transaction moves on only when its connection
could not be made: once sent, it may have been applied, and the caller is
told so (L{StoreUnavailable}).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any, Sequence, TypedDict
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.serialization import Encoding
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, succeed
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate, optionsForClientTLS, platformTrust
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from balancer.cluster.store import (
    Committed,
    Delete,
    Entry,
    Event,
    EventsReceiver,
    IKeyValueStore,
    IWatch,
    NotChangedSince,
    Operation,
    Put,
    Snapshot,
    StoreRefused,
    StoreUnavailable,
    WatchCompacted,
)
from balancer.tlsfiles import load_certificates, load_private_key, load_trust_root

#: gRPC status codes that etcd puts in its error bodies.
_NOT_FOUND = 5
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16
#: How much of a body that is not etcd's JSON an error message shows.
_SHOWN_BODY = 200


# -- requests and answers as JSON, shared by the reactor client and read_prefix_now --


def b64(text: str | bytes) -> str:
    """C{text} (UTF-8 when text) as the gateway's base64."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(field: Any) -> bytes:
    """The bytes of a base64 field of an answer (absent: empty)."""
    return base64.b64decode(field or "")


def prefix_end(prefix: str) -> bytes:
    """
    The C{range_end} that makes a range read every key starting with
    C{prefix}: the prefix with its last byte below 0xff incremented (the
    empty prefix: every key, C{"\\0"}).
    """
    raw = bytearray(prefix.encode("utf-8"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


def range_request(prefix: str) -> dict[str, Any]:
    """The body of C{/v3/kv/range} for every key under C{prefix}, sorted by key."""
    return {"key": b64(prefix or b"\0"), "range_end": b64(prefix_end(prefix))}


def entry_from(kv: dict[str, Any]) -> Entry:
    """An L{Entry} from one C{kv} object of an answer (numbers come as strings; zeros are left out)."""
    return Entry(
        key=unb64(kv.get("key")).decode("utf-8", "replace"),
        value=unb64(kv.get("value")),
        mod_revision=int(kv.get("mod_revision", 0)),
        create_revision=int(kv.get("create_revision", 0)),
        lease=int(kv.get("lease", 0)),
    )


def revision_of(answer: dict[str, Any]) -> int:
    """The store's revision in an answer's header."""
    return int(answer.get("header", {}).get("revision", 0))


def snapshot_from(answer: dict[str, Any]) -> Snapshot:
    """The L{Snapshot} in an answer of C{/v3/kv/range}."""
    return Snapshot(revision_of(answer), tuple(entry_from(kv) for kv in answer.get("kvs", ())))


def txn_request(conditions: Sequence[NotChangedSince], operations: Sequence[Operation]) -> dict[str, Any]:
    """The body of C{/v3/kv/txn}: every key's C{mod_revision} below its revision + 1, then the operations."""
    compare = [
        {"key": b64(c.key), "target": "MOD", "result": "LESS", "mod_revision": str(c.revision + 1)} for c in conditions
    ]
    success: list[dict[str, Any]] = []
    for operation in operations:
        if isinstance(operation, Put):
            put: dict[str, Any] = {"key": b64(operation.key), "value": b64(operation.value)}
            if operation.lease:
                put["lease"] = str(operation.lease)
            success.append({"request_put": put})
        elif isinstance(operation, Delete):
            success.append({"request_delete_range": {"key": b64(operation.key)}})
        else:
            raise TypeError(f"not a store operation: {operation!r}")
    return {"compare": compare, "success": success}


def events_from(result: dict[str, Any]) -> list[Event]:
    """The L{Event}s of one watch response, in order (a put has no C{type}: it is etcd's zero)."""
    events = []
    for event in result.get("events", ()):
        kind = "delete" if event.get("type") == "DELETE" else "put"
        events.append(Event(kind, entry_from(event.get("kv", {}))))
    return events


def error_in(body: bytes) -> tuple[str, int] | None:
    """
    etcd's message and gRPC code when C{body} is one of its error objects
    (C{{"error": ..., "message": ..., "code": N}}), else None.
    """
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or "error" not in answer:
        return None
    error = answer["error"]
    message = answer.get("message") or (error.get("message") if isinstance(error, dict) else error)
    code = answer.get("code", error.get("grpc_code", 0) if isinstance(error, dict) else 0)
    return str(message), int(code or 0)


def refusal(path: str, status: int, body: bytes) -> tuple[str, int]:
    """The message (and gRPC code, 0 when none) for an answer of C{path} with HTTP C{status} that is not a success."""
    error = error_in(body)
    if error is not None:
        return f"etcd refused {path}: {error[0]}", error[1]
    shown = body[:_SHOWN_BODY].decode("utf-8", "replace").strip()
    return f"etcd refused {path}: HTTP {status}" + (f": {shown}" if shown else ""), 0


def decode_answer(path: str, body: bytes) -> dict[str, Any]:
    """
    The JSON object of a successful answer; a streamed one (C{/v3/lease/keepalive})
    is C{{"result": ...}} and gives its result.

    @raise StoreRefused: when it is not JSON, or an error object.
    """
    first = body.split(b"\n", 1)[0] if body.lstrip().startswith(b'{"result"') else body
    try:
        answer = json.loads(first)
    except ValueError:
        shown = body[:_SHOWN_BODY].decode("utf-8", "replace")
        raise StoreRefused(f"etcd answered {path} with what is not JSON: {shown!r}") from None
    if not isinstance(answer, dict):
        raise StoreRefused(f"etcd answered {path} with JSON that is not an object: {answer!r}")
    if "error" in answer:
        raise StoreRefused(refusal(path, 200, first)[0])
    if "result" in answer and isinstance(answer["result"], dict):
        return dict(answer["result"])
    return answer


class EtcdOptions(TypedDict):
    """The keyword options of L{EtcdGateway} and L{read_prefix_now} besides the endpoints (their meanings are theirs)."""

    user: str | None
    password: str | None
    ca: str | None
    cert: str | None
    key: str | None
    timeout: float


def check_endpoints(endpoints: Sequence[str]) -> tuple[str, ...]:
    """
    C{endpoints} without trailing slashes.

    @raise ValueError: naming the first that is not an C{http://} or C{https://} URL with a host, or when there is none.
    """
    if isinstance(endpoints, str) or not endpoints:
        raise ValueError(f"etcd endpoints: a list of URLs like http://127.0.0.1:2379 is needed, not {endpoints!r}")
    checked = []
    for endpoint in endpoints:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise ValueError(f"etcd endpoint {endpoint!r}: not a URL like http://127.0.0.1:2379 or https://host:2379")
        checked.append(endpoint.rstrip("/"))
    return tuple(checked)


def unavailable(tried: Sequence[tuple[str, str]]) -> StoreUnavailable:
    """The error for endpoints that all failed: each named with its cause."""
    causes = "; ".join(f"{endpoint}: {cause}" for endpoint, cause in tried)
    return StoreUnavailable(f"etcd unavailable ({causes})")


# -- the reactor's client --


@implementer(IPolicyForHTTPS)
class EtcdTLS:
    """Checks etcd's certificate against a CA file (else the system's roots); presents an optional client certificate."""

    def __init__(self, ca: str | None, cert: str | None, key: str | None) -> None:
        """
        @raise balancer.tlsfiles.TLSError: naming C{cluster.etcd_ca},
            C{cluster.etcd_cert} or C{cluster.etcd_key} and the file that cannot be used.
        @raise ValueError: when only one of C{cert} and C{key} is given.
        """
        if bool(cert) != bool(key):
            raise ValueError("cluster.etcd_cert and cluster.etcd_key go together")
        self._trust: Any = load_trust_root(ca, "cluster.etcd_ca") if ca else platformTrust()
        self._client = None
        if cert and key:
            leaf = load_certificates(cert, "cluster.etcd_cert")[0]
            private = load_private_key(key, "cluster.etcd_key")
            self._client = PrivateCertificate.fromCertificateAndKeyPair(
                Certificate.loadPEM(leaf.public_bytes(Encoding.PEM)), KeyPair(private)
            )

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """Client TLS options for C{hostname} (a name or an IP address)."""
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust, clientCertificate=self._client)


class _TokenRejected(Exception):
    """etcd did not accept the authentication token (it expired, or etcd restarted)."""


def describe(failure: BaseException | None) -> str:
    """A one-line cause for a request that got no answer."""
    if failure is None:
        return "closed"
    if isinstance(failure, (DeferredTimeout, CancelledError)):
        return "no answer in time"
    if isinstance(failure, ResponseNeverReceived) and failure.reasons:
        return describe(failure.reasons[0].value)
    text = str(failure).strip() or type(failure).__name__
    return text.splitlines()[0]


@implementer(IKeyValueStore)
class EtcdGateway:
    """
    L{IKeyValueStore} over etcd's v3 JSON gateway.

    @ivar endpoints: the URLs tried, in order from the one that last answered.
    @ivar reactor: the reactor it connects and times its requests with.
    @ivar timeout: seconds each request may take.
    @ivar http: the treq client.
    @ivar user: the user it authenticates as (None: none).
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        *,
        user: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 2.0,
        http: Any = None,
    ) -> None:
        """
        @param endpoints: C{http://host:port} or C{https://host:port} URLs of etcd's client port.
        @param user: authenticate as this user (with C{password}); none: etcd without authentication.
        @param ca: PEM file of the CA that signs etcd's certificate (https; default: the system's roots).
        @param cert: PEM file of a client certificate to present, with C{key}.
        @param timeout: seconds each request (and a connection attempt) may take.
        @param http: a treq-like client to use instead of making one (tests).
        @raise ValueError: for a bad endpoint, or a user without a password.
        @raise balancer.tlsfiles.TLSError: for a TLS file that cannot be used.
        """
        self.endpoints = list(check_endpoints(endpoints))
        if bool(user) != (password is not None):
            raise ValueError("etcd: a user needs a password (and a password a user)")
        if timeout <= 0:
            raise ValueError(f"etcd timeout: must be positive, not {timeout!r}")
        self.reactor = reactor
        self.user = user
        self._password = password
        self.timeout = timeout
        self._token: str | None = None
        self._watches: set[GatewayWatch] = set()
        self._pool: HTTPConnectionPool | None = None
        if http is None:
            tls = EtcdTLS(ca, cert, key) if (ca or cert or key) else BrowserLikePolicyForHTTPS()
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, contextFactory=tls, connectTimeout=timeout, pool=self._pool)
            http = HTTPClient(agent)
        self.http = http

    # -- IKeyValueStore --

    def get_prefix(self, prefix: str) -> Deferred[Snapshot]:
        """Every key under C{prefix}, sorted by key, at the store's current revision."""
        return Deferred.fromCoroutine(self._get_prefix(prefix))

    async def _get_prefix(self, prefix: str) -> Snapshot:
        return snapshot_from(await self.call("/v3/kv/range", range_request(prefix)))

    def commit(self, conditions: Sequence[NotChangedSince], operations: Sequence[Operation]) -> Deferred[Committed]:
        """Apply C{operations} in one transaction if no key in C{conditions} changed after its revision."""
        return Deferred.fromCoroutine(self._commit(txn_request(conditions, operations)))

    async def _commit(self, body: dict[str, Any]) -> Committed:
        answer = await self.call("/v3/kv/txn", body, idempotent=False)
        return Committed(bool(answer.get("succeeded", False)), revision_of(answer))

    def watch_prefix(self, prefix: str, start_revision: int, receiver: EventsReceiver) -> IWatch:
        """Watch C{prefix} from C{start_revision} on (see L{GatewayWatch})."""
        watch = GatewayWatch(self, prefix, start_revision, receiver)
        self._watches.add(watch)
        watch.ended.addBoth(self._forget, watch)
        watch.start()
        return watch

    def _forget(self, result: object, watch: GatewayWatch) -> object:
        self._watches.discard(watch)
        return result

    def grant_lease(self, ttl: int) -> Deferred[int]:
        """A new lease of C{ttl} seconds."""
        return Deferred.fromCoroutine(self._grant(ttl))

    async def _grant(self, ttl: int) -> int:
        answer = await self.call("/v3/lease/grant", {"TTL": ttl})
        return int(answer["ID"])

    def keep_alive(self, lease: int) -> Deferred[int]:
        """Renew C{lease}: its TTL again, or 0 when it has expired (etcd then leaves C{TTL} out)."""
        return Deferred.fromCoroutine(self._keep_alive(lease))

    async def _keep_alive(self, lease: int) -> int:
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return max(0, int(answer.get("TTL", 0)))

    def revoke_lease(self, lease: int) -> Deferred[None]:
        """End C{lease} now (one that has already expired is no error)."""
        return Deferred.fromCoroutine(self._revoke(lease))

    async def _revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)}, tolerated=(_NOT_FOUND,))

    def close(self) -> Deferred[None]:
        """Stop every watch and close the pooled connections."""
        for watch in list(self._watches):
            watch.stop()
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return succeed(None)

    # -- requests --

    async def call(
        self, path: str, body: dict[str, Any], *, idempotent: bool = True, tolerated: tuple[int, ...] = ()
    ) -> dict[str, Any]:
        """
        POST C{body} to C{path} on the first endpoint that answers, with
        the authentication token (obtained again once if etcd rejects it).

        @param idempotent: whether the request may be sent to the next
            endpoint after one that took it and did not answer in time.
        @param tolerated: gRPC codes of etcd's errors that are no error
            here: the answer is then an empty object.
        @raise StoreUnavailable: when no endpoint answered.
        @raise StoreRefused: when etcd answered with an error.
        """
        for attempt in (1, 2):
            token = await self.token()
            try:
                status, answer = await self.post(path, body, token, idempotent=idempotent)
            except _TokenRejected as e:
                self.forget_token()
                if attempt == 2 or self.user is None:
                    raise StoreRefused(str(e)) from None
                continue
            if status != 200:
                message, code = refusal(path, status, answer)
                if code in tolerated:
                    return {}
                raise StoreRefused(message)
            return decode_answer(path, answer)
        raise AssertionError("unreachable")

    def forget_token(self) -> None:
        """etcd rejected the token: obtain a new one for the next request."""
        self._token = None

    async def token(self) -> str | None:
        """The authentication token for requests (None without a user), obtained now if there is none."""
        if self.user is None:
            return None
        if self._token is None:
            status, body = await self.post(
                "/v3/auth/authenticate", {"name": self.user, "password": self._password}, None
            )
            if status != 200:
                raise StoreRefused(refusal("/v3/auth/authenticate", status, body)[0] + f" (user {self.user!r})")
            self._token = str(decode_answer("/v3/auth/authenticate", body)["token"])
        return self._token

    async def post(
        self, path: str, body: dict[str, Any], token: str | None, *, idempotent: bool = True
    ) -> tuple[int, bytes]:
        """
        POST to each endpoint in turn until one answers: (HTTP status,
        body).  An endpoint that answers 503 (etcd without a leader, or
        stopping) counts as one that did not answer.

        @raise _TokenRejected: when etcd rejects C{token}.
        @raise StoreUnavailable: when none answers, naming each and why.
        """
        tried: list[tuple[str, str]] = []
        for endpoint in list(self.endpoints):
            try:
                status, answer = await self.exchange(endpoint, path, body, token)
            except Exception as e:
                cause = describe(e)
                sent = not isinstance(e, ConnectError)
            else:
                if status == 401 or (error_in(answer) or ("", 0))[1] == _UNAUTHENTICATED:
                    raise _TokenRejected(refusal(path, status, answer)[0])
                if status != 503:
                    self.answered(endpoint)
                    return status, answer
                cause, sent = refusal(path, status, answer)[0], True
            tried.append((endpoint, cause))
            if sent and not idempotent:
                raise StoreUnavailable(
                    f"etcd at {endpoint} did not answer {path} ({cause}): it may or may not have applied it"
                )
        raise unavailable(tried)

    def exchange(self, endpoint: str, path: str, body: dict[str, Any], token: str | None) -> Deferred[tuple[int, bytes]]:
        """POST C{body} to C{path} on C{endpoint}: (HTTP status, body), failing after the timeout."""
        return Deferred.fromCoroutine(self._exchange(endpoint + path, body, token)).addTimeout(self.timeout, self.reactor)

    async def _exchange(self, url: str, body: dict[str, Any], token: str | None) -> tuple[int, bytes]:
        response = await self.http.post(url, data=json.dumps(body).encode("utf-8"), headers=self.headers(token))
        content: bytes = await response.content()
        return response.code, content

    def headers(self, token: str | None) -> dict[bytes, list[bytes]]:
        """The request headers: JSON, and the token when there is one."""
        headers = {b"Content-Type": [b"application/json"]}
        if token is not None:
            headers[b"Authorization"] = [token.encode("utf-8")]
        return headers

    def answered(self, endpoint: str) -> None:
        """Try C{endpoint} first from now on."""
        if self.endpoints[0] != endpoint:
            self.endpoints.remove(endpoint)
            self.endpoints.insert(0, endpoint)


class WatchStreamParser:
    """
    Splits a watch's streamed answer into its JSON objects, one per line,
    whatever the boundaries of the chunks it arrives in.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """
        The objects completed by C{data}.

        @raise StoreRefused: for a line that is not a JSON object.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        objects = []
        for line in lines:
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except ValueError:
                raise StoreRefused(f"etcd's watch stream sent what is not JSON: {line[:_SHOWN_BODY]!r}") from None
            if not isinstance(parsed, dict):
                raise StoreRefused(f"etcd's watch stream sent JSON that is not an object: {parsed!r}")
            objects.append(parsed)
        return objects


class WatchBody(Protocol):
    """Receives a watch's streamed body and hands each line's object to the watch (None: discards it)."""

    def __init__(self, watch: GatewayWatch | None) -> None:
        self._watch = watch
        self._parser = WatchStreamParser()

    def dataReceived(self, data: bytes) -> None:
        """Hand the objects completed by C{data} to the watch."""
        if self._watch is None:
            return
        try:
            objects = self._parser.feed(data)
        except StoreRefused as e:
            self._watch.end(Failure(e))
            return
        for answer in objects:
            if self._watch.done:
                return
            self._watch.message(self, answer)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        """The stream ended: the watch ends with L{StoreUnavailable} unless it was stopped."""
        if self._watch is not None:
            self._watch.lost(self, reason)


@implementer(IWatch)
class GatewayWatch:
    """
    A watch over C{POST /v3/watch}: a C{create_request}, then one streamed
    answer of C{{"result": ...}} lines: C{created}, then events (and progress
    notices without events), until etcd cancels it (C{compact_revision}: the
    start was compacted) or the connection drops.

    While it runs, its endpoint is asked for its status every 2 x timeout
    seconds: an endpoint that silently stopped answering ends the watch
    (L{StoreUnavailable}) instead of leaving it waiting for ever.  An
    exception raised by the receiver ends the watch with it.
    """

    def __init__(self, gateway: EtcdGateway, prefix: str, start_revision: int, receiver: EventsReceiver) -> None:
        self._gateway = gateway
        self._prefix = prefix
        self._start_revision = start_revision
        self._receiver = receiver
        self.ended: Deferred[None] = Deferred()
        self.done = False
        self._endpoint = ""
        self._token_retried = False
        self._body: WatchBody | None = None
        self._opening: Deferred[None] | None = None
        self._not_created: IDelayedCall | None = None
        self._probe: LoopingCall | None = None
        self._probing: Deferred[Any] | None = None

    def start(self) -> None:
        """Open the stream (on the first endpoint that accepts it)."""
        self._opening = Deferred.fromCoroutine(self._open())
        self._opening.addErrback(self._failed_to_open)

    async def _open(self) -> None:
        gateway = self._gateway
        create = {**range_request(self._prefix), "start_revision": str(self._start_revision), "progress_notify": True}
        data = json.dumps({"create_request": create}).encode("utf-8")
        headers = gateway.headers(await gateway.token())
        tried: list[tuple[str, str]] = []
        for endpoint in list(gateway.endpoints):
            request = gateway.http.post(endpoint + "/v3/watch", data=data, headers=headers)
            try:
                response = await request.addTimeout(gateway.timeout, gateway.reactor)
            except Exception as e:
                if self.done:
                    return
                tried.append((endpoint, describe(e)))
                continue
            gateway.answered(endpoint)
            self._endpoint = endpoint
            if response.code != 200:
                try:
                    content = await response.content().addTimeout(gateway.timeout, gateway.reactor)
                except Exception:
                    content = b""
                if response.code == 401 and self._retry_token():
                    return
                raise StoreRefused(refusal("/v3/watch", response.code, content)[0])
            self._stream(response)
            return
        raise unavailable(tried)

    def _retry_token(self) -> bool:
        """After etcd rejected the token: open again with a new one, once; whether it does."""
        if self._token_retried or self._gateway.user is None:
            return False
        self._token_retried = True
        self._gateway.forget_token()
        if self._body is not None and self._body.transport is not None:
            self._body.transport.stopProducing()  # type: ignore[attr-defined]
        self._body = None
        if self._not_created is not None and self._not_created.active():
            self._not_created.cancel()
        self.start()
        return True

    def _stream(self, response: IResponse) -> None:
        if self.done:
            response.deliverBody(WatchBody(None))
            return
        self._body = WatchBody(self)
        response.deliverBody(self._body)
        # etcd answers "created" at once: a stream that stays silent is not a working watch.
        self._not_created = self._gateway.reactor.callLater(
            self._gateway.timeout,
            self.end,
            Failure(StoreUnavailable(f"etcd at {self._endpoint} did not confirm the watch in time")),
        )

    def _failed_to_open(self, failure: Failure) -> None:
        if not self.done:
            self.end(failure)

    def message(self, body: WatchBody, answer: dict[str, Any]) -> None:
        """One object of C{body}'s stream."""
        if body is not self._body:
            return
        if "error" in answer:
            message, code = refusal("/v3/watch", 200, json.dumps(answer).encode())
            error = StoreUnavailable(f"etcd at {self._endpoint}: {message}") if code == _UNAVAILABLE else StoreRefused(message)
            self.end(Failure(error))
            return
        result = answer.get("result", {})
        if result.get("canceled"):
            compacted = int(result.get("compact_revision", 0))
            reason = result.get("cancel_reason") or "no reason given"
            if compacted:
                self.end(Failure(WatchCompacted(compacted)))
            elif not ("Unauthenticated" in reason and self._retry_token()):
                self.end(Failure(StoreRefused(f"etcd cancelled the watch on {self._prefix!r}: {reason}")))
            return
        if result.get("created") and self._probe is None:
            if self._not_created is not None and self._not_created.active():
                self._not_created.cancel()
            self._probe = LoopingCall(self._check_endpoint)
            self._probe.clock = self._gateway.reactor
            self._probe.start(2 * self._gateway.timeout, now=False)
        events = events_from(result)
        if events:
            try:
                self._receiver(revision_of(result), events)
            except Exception:
                self.end(Failure())

    def _check_endpoint(self) -> None:
        if self._probing is not None:
            return
        # Any answer, even a refusal, shows the endpoint is there.
        self._probing = self._gateway.exchange(self._endpoint, "/v3/maintenance/status", {}, None)
        self._probing.addCallbacks(self._probed, self._probe_failed)

    def _probed(self, answer: object) -> None:
        self._probing = None

    def _probe_failed(self, failure: Failure) -> None:
        self._probing = None
        if not self.done:
            cause = describe(failure.value)
            self.end(Failure(StoreUnavailable(f"etcd at {self._endpoint} stopped answering the watch's checks: {cause}")))

    def lost(self, body: WatchBody, reason: Failure) -> None:
        """C{body}'s stream ended."""
        if body is self._body:
            cause = describe(reason.value)
            self.end(Failure(StoreUnavailable(f"the watch's connection to etcd at {self._endpoint} ended: {cause}")))

    def end(self, failure: Failure) -> None:
        """End the watch with C{failure} (nothing more is delivered); the first end wins."""
        if self.done:
            return
        self._close()
        self.ended.errback(failure)

    def stop(self) -> None:
        """End the watch: nothing more is delivered, C{ended} fires with None."""
        if self.done:
            return
        self._close()
        self.ended.callback(None)

    def _close(self) -> None:
        self.done = True
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        if self._probing is not None:
            self._probing.cancel()
        if self._not_created is not None and self._not_created.active():
            self._not_created.cancel()
        if self._opening is not None and not self._opening.called:
            self._opening.cancel()
        if self._body is not None and self._body.transport is not None:
            self._body.transport.stopProducing()  # type: ignore[attr-defined]


# -- start-up, before the reactor runs --


def read_prefix_now(
    endpoints: Sequence[str],
    prefix: str,
    *,
    user: str | None = None,
    password: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 2.0,
) -> Snapshot:
    """
    Every key under C{prefix} now, read with the standard library (it
    blocks: for start-up, before the reactor runs).  Endpoints are tried in
    order; each request takes at most C{timeout} seconds.

    @raise StoreUnavailable: when no endpoint answered.
    @raise StoreRefused: when etcd answered with an error (a rejected user too).
    @raise ValueError: for a bad endpoint.
    @raise balancer.tlsfiles.TLSError: for a TLS file that cannot be used.
    """
    checked = check_endpoints(endpoints)
    if ca or cert or key:
        # Checked with the same messages as the reactor's client gives.
        EtcdTLS(ca, cert, key)
    context = ssl.create_default_context(cafile=ca or None)
    if cert and key:
        context.load_cert_chain(cert, key)
    tried: list[tuple[str, str]] = []
    for endpoint in checked:
        try:
            headers = {"Content-Type": "application/json"}
            if user is not None:
                body = {"name": user, "password": password or ""}
                answer = _post_now(endpoint, "/v3/auth/authenticate", body, headers, context, timeout)
                headers["Authorization"] = str(answer["token"])
            return snapshot_from(_post_now(endpoint, "/v3/kv/range", range_request(prefix), headers, context, timeout))
        except (OSError, HTTPException) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            tried.append((endpoint, "no answer in time" if isinstance(reason, socket.timeout) else str(reason)))
    raise unavailable(tried)


def _post_now(
    endpoint: str, path: str, body: dict[str, Any], headers: dict[str, str], context: ssl.SSLContext, timeout: float
) -> dict[str, Any]:
    """POST C{body} to C{endpoint + path} and decode the answer (L{StoreRefused} for an error)."""
    request = urllib.request.Request(endpoint + path, data=json.dumps(body).encode("utf-8"), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            return decode_answer(path, answer.read())
    except urllib.error.HTTPError as e:
        raise StoreRefused(refusal(path, e.code, e.read())[0]) from None
