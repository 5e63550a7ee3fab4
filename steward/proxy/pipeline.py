"""The request hot path, as a raw ASGI handler: auth -> route -> forward -> account.

Per request: one hash and dict lookup for the key, one upstream call over a pooled connection,
chunk-by-chunk relay, usage read from the bytes as they pass, and one spool write. No database,
no re-serialised bodies, nothing blocking in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from steward.bodies.writer import BodyWriter, Capture, object_key
from steward.config import LimitsConfig
from steward.daemon.metrics import Metrics
from steward.errors import GatewayError
from steward.pricing.pricer import Pricer
from steward.providers.base import DecodingMeter, Meter, WireFormat
from steward.proxy.access import Refusals, authorize
from steward.proxy.exchange import Exchange
from steward.proxy.forwarding import (
    HOP_BY_HOP,
    UNSAFE_PATH,
    find_gateway_key,
    split_headers,
    split_query_key,
    strip_gateway_keys,
    upstream_url,
)
from steward.proxy.routing import Router
from steward.records.spool import Spool
from steward.secrets.gateway_keys import GatewayKey, KeyIndex
from steward.secrets.provider_keys import CredentialIndex

if TYPE_CHECKING:
    from steward.daemon.telemetry import Telemetry

log = logging.getLogger("steward.proxy")
access_log = logging.getLogger("steward.access")
ACCESS_FIELDS = ("id", "api_key_id", "provider", "model", "response_model", "status",
                 "input_tokens", "output_tokens", "cost", "latency_ms", "ttft_ms", "error")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

REQUEST_ID_HEADER = b"x-majordomo-request-id"
BODY_META = ("id", "ts", "api_key_id", "provider", "endpoint", "model", "response_model",
             "method", "path", "stream", "status")


class Proxy:
    def __init__(self, router: Router, keys: KeyIndex, credentials: CredentialIndex,
                 sessions: dict[str, aiohttp.ClientSession], spool: Spool, pricer: Pricer,
                 bodies: BodyWriter | None, metrics: Metrics, limits: LimitsConfig):
        self.bodies = bodies
        self.metrics = metrics
        self.refusals = Refusals(metrics.refused)
        self.key_slots: dict[str, Limiter] = {}  # made anew by configure()
        self.pricer = pricer  # replaced whole when the table or overrides change
        self.keys = keys
        self.credentials = credentials
        self.spool = spool
        self.telemetry: Telemetry | None = None  # set by the gateway when [telemetry] is on
        self.served = 0
        self.buffered_bytes = 0  # request bodies held right now, all requests together
        self.draining = 0.0  # on SIGTERM, server.drain_timeout: a cut from now on is the drain's
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self._in_use: dict[aiohttp.ClientSession, int] = {}  # requests per pool, while > 0
        self._closing: set[asyncio.Future[None]] = set()
        self.configure(router, sessions, limits)

    def configure(self, router: Router, sessions: dict[str, aiohttp.ClientSession],
                  limits: LimitsConfig) -> None:
        """A reload: new upstreams and limits for requests that start from now on. An old pool
        closes when its last request ends; old per-key limiters are released by the requests
        holding them, and every key gets the new limit."""
        retired = [s for s in self.sessions.values() if s not in sessions.values()]
        self.router, self.sessions, self.limits = router, sessions, limits
        self.key_slots = {}
        for session in retired:
            if session not in self._in_use:
                self._close(session)
        self.max_body_bytes = limits.max_body_bytes
        self.max_tags, self.max_tag_bytes = limits.max_tags, limits.max_tag_bytes
        self.provider_slots = {name: Limiter(limits.max_concurrent_per_provider,
                                             limits.max_queued_per_provider)
                               for name in router.upstreams}

    @contextlib.asynccontextmanager
    async def _slot(self, provider: str, ex: Exchange) -> AsyncIterator[None]:
        """A place among the provider's (and, if capped, the key's) concurrent requests."""
        per_key = self.limits.max_concurrent_per_key
        key_slot = None
        if per_key and ex.key is not None:
            key_slot = self.key_slots.setdefault(ex.key.id, Limiter(per_key, 0))
            await key_slot.acquire(429, f"this gateway key already has {per_key} requests in "
                                   "flight (limits.max_concurrent_per_key)")
        try:
            slot = self.provider_slots[provider]
            await slot.acquire(503, f"{provider} already has "
                               f"{self.limits.max_concurrent_per_provider} requests in flight "
                               "and a full queue; retry shortly")
            try:
                yield
            finally:
                slot.release()
        finally:
            if key_slot is not None:
                key_slot.release()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(method=scope["method"], path=scope["path"], query=scope["query_string"],
                      raw_path=scope["raw_path"], headers=scope["headers"])
        try:
            await self._handle(ex, scope, receive, send)
        finally:
            self.buffered_bytes -= ex.buffered

    async def _handle(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        """auth -> route -> forward -> account, then the bodies to the background writer.

        Authentication comes first: a request without a valid key decides no label and leaves
        no record. The scope check comes before any stored credential is looked at."""
        fmt = None
        try:
            key = self._authenticate(ex, find_gateway_key(scope["headers"], ex.query), scope)
            self._check_request_shape(scope)
            split = split_headers(scope["headers"], self.max_tags, self.max_tag_bytes)
            ex.tags = split.tags
            ex.query = strip_gateway_keys(ex.query)
            ex.upstream, ex.route = self.router.resolve(ex.method, ex.path, split.provider)
            fmt = ex.upstream.fmt
            authorize(key, ex.upstream.name, ex.route, ex.method, ex.path)
            headers = split.forward
            self._inject_credential(ex, headers, self._caller_credential(ex, headers))
            body = await self._read_body(ex, scope, receive)
            ex.request_model = ex.route.model or _find_model(body)
            if self.bodies is not None:
                ex.body_error = self.bodies.refuse()  # the disk is low: say so, keep serving
            if self.bodies is not None and ex.body_error is None:
                stored_as = object_key(key.id, ex.id, ex.started_at)
                ex.capture = Capture(stored_as, {}, scope["headers"], body,
                                     scope["query_string"])
                ex.body_ref = self.bodies.url(stored_as)
            await self._forward(ex, headers, body, receive, send)
        except GatewayError as err:
            await self._fail(ex, fmt, err, send)
        except Exception:
            log.exception("request %s failed inside Steward", ex.id)
            if not ex.responded:
                err = GatewayError(500, f"Steward failed to handle this request (request id "
                                   f"{ex.id}); the gateway log has the details")
                await self._fail(ex, fmt, err, send)
        finally:
            await self._account(ex)
        if ex.capture is not None and self.bodies is not None:
            await self.bodies.submit(ex.capture)  # after the caller has its whole answer

    async def _fail(self, ex: Exchange, fmt: WireFormat | None, err: GatewayError,
                    send: Send) -> None:
        fmt = fmt or self.router.error_format(ex.method, ex.path)
        ex.status, ex.error = err.status, err.message
        body = fmt.error_body(err.status, err.message)
        if ex.capture is not None:
            ex.capture.response_status = err.status
            ex.capture.response_headers = [(b"content-type", b"application/json")]
            ex.capture.response_chunks = [body]
        await self._account(ex)
        ex.responded = True
        await _send_simple(send, err.status, body, ex.id, err.headers)

    def _check_request_shape(self, scope: Scope) -> None:
        """URL length (414), header count and size (431), and paths that could mean something
        else to the upstream than to Steward (400)."""
        raw_path: bytes = scope["raw_path"]
        if len(raw_path) + len(scope["query_string"]) > self.limits.max_url_bytes:
            raise GatewayError(414, f"the URL is longer than Steward's limit of "
                               f"{self.limits.max_url_bytes} bytes (limits.max_url_bytes)")
        headers = scope["headers"]
        if len(headers) > self.limits.max_headers:
            raise GatewayError(431, f"{len(headers)} request headers; Steward accepts at most "
                               f"{self.limits.max_headers} (limits.max_headers)")
        if sum(len(n) + len(v) for n, v in headers) > self.limits.max_header_bytes:
            raise GatewayError(431, "the request headers are larger than Steward's limit of "
                               f"{self.limits.max_header_bytes} bytes (limits.max_header_bytes)")
        if UNSAFE_PATH.search(raw_path):
            raise GatewayError(400, "the path contains '..', an encoded '.', '/' or '\\', or a "
                               "control character; LLM API paths never do")
        names = {n for n, _ in headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 6.3: the two framings disagree on where the body ends, so bytes after
            # it could run as a second request; refuse, and close so none does.
            raise GatewayError(400, "the request has both Transfer-Encoding and Content-Length;"
                               " send one of them", headers={"Connection": "close"})

    def _caller_credential(self, ex: Exchange, headers: list[tuple[str, str]]) -> bool:
        """Whether the caller brought its own provider credential (gateway keys are gone by
        now from headers and query alike)."""
        assert ex.upstream is not None
        names = self._credential_names(ex)
        if any(name in names for name, _ in headers):
            return True
        return ex.upstream.fmt.name == "gemini" and b"key=" in ex.query and bool(
            split_query_key(ex.query)[0])

    def _credential_names(self, ex: Exchange) -> set[str]:
        assert ex.upstream is not None
        return {n.decode() for n in ex.upstream.fmt.credential_headers}

    def _inject_credential(self, ex: Exchange, headers: list[tuple[str, str]],
                           caller: bool) -> None:
        """The stored key for this gateway key (else the provider default), when the caller
        sent none or the provider does not allow callers' own credentials."""
        assert ex.upstream is not None and ex.key is not None
        upstream = ex.upstream
        if caller and upstream.allow_caller_credentials:
            return
        stored = self.credentials.lookup(upstream.name, ex.key.id, time.time())
        header = upstream.fmt.credential_headers[0].decode()
        if stored is None:
            if caller:
                raise GatewayError(401, f"{upstream.name} does not accept callers' own "
                                   "credentials here (allow_caller_credentials = false) and no "
                                   f"key is stored: run `steward providers set {upstream.name}`")
            raise GatewayError(401, f"No {upstream.name} API key: send your own in the "
                               f"{header} header, or have the operator store one with "
                               f"`steward providers set {upstream.name}`.")
        if caller:
            names = self._credential_names(ex)
            headers[:] = [(n, v) for n, v in headers if n not in names]
            if upstream.fmt.name == "gemini" and b"key=" in ex.query:
                ex.query = split_query_key(ex.query)[1]
        headers.append(upstream.fmt.credential_header(stored))

    def _authenticate(self, ex: Exchange, presented: str | None, scope: Scope) -> GatewayKey:
        if not presented:
            self._refuse(ex, "missing", scope)
            raise GatewayError(401, "Missing X-Majordomo-Key header: send your Steward gateway "
                               "key (create one with `steward keys add NAME`).")
        ex.key = self.keys.authenticate(presented, time.time())
        if ex.key is None:
            self._refuse(ex, "invalid", scope)
            raise GatewayError(401, "Invalid X-Majordomo-Key: the key is unknown, revoked or "
                               "expired. Check it, or create one with `steward keys add NAME`.")
        return ex.key

    def _refuse(self, ex: Exchange, reason: str, scope: Scope) -> None:
        client = scope.get("client")
        self.refusals.refused(reason, ex.method, ex.path, client[0] if client else None)

    async def _read_body(self, ex: Exchange, scope: Scope, receive: Receive
                         ) -> bytes | bytearray:
        """The whole request body. A body in several chunks is gathered into one buffer as it
        arrives, so a 30 MiB prompt is held once, not once in chunks and again joined. Every
        byte held counts against limits.max_buffered_body_bytes until the request ends."""
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                if int(value) > limit:
                    raise _too_large(limit)
                self._buffer(ex, int(value))  # refused before a byte is read
        first = b""
        body: bytearray | None = None
        while True:
            try:
                async with asyncio.timeout(self.limits.client_timeout):
                    message = await receive()
            except TimeoutError:
                raise GatewayError(408, "the request body stopped arriving for longer than "
                                   f"{self.limits.client_timeout:g}s (limits.client_timeout)"
                                   ) from None
            if message["type"] == "http.disconnect":
                raise GatewayError(499, "client disconnected while sending the request")
            chunk = message.get("body", b"")
            if body is not None:
                body += chunk
            elif not first:
                first = chunk
            elif chunk:
                body = bytearray(first)
                body += chunk
                first = b""
            size = len(body) if body is not None else len(first)
            if size > limit:
                raise _too_large(limit)
            if size > ex.buffered:
                self._buffer(ex, size - ex.buffered)
            if not message.get("more_body", False):
                return body if body is not None else first

    def _buffer(self, ex: Exchange, size: int) -> None:
        cap = self.limits.max_buffered_body_bytes
        if self.buffered_bytes + size > cap and size > 0:
            raise GatewayError(503, f"Steward is already holding {self.buffered_bytes >> 20} "
                               f"MiB of request bodies (limits.max_buffered_body_bytes is "
                               f"{cap >> 20} MiB); retry shortly", headers={"Retry-After": "1"})
        self.buffered_bytes += size
        ex.buffered += size

    async def _forward(self, ex: Exchange, headers: list[tuple[str, str]], body: bytes | bytearray,
                       receive: Receive, send: Send) -> None:
        assert ex.upstream is not None and ex.route is not None
        upstream, route = ex.upstream, ex.route
        target = upstream_url(upstream.base_url, ex.raw_path, ex.path, route.upstream_path,
                              ex.query)
        task = asyncio.current_task()
        assert task is not None
        session = self.sessions[upstream.name]
        self._in_use[session] = self._in_use.get(session, 0) + 1
        watcher = asyncio.ensure_future(receive())
        watcher.add_done_callback(lambda w: _on_disconnect(w, ex, task))
        response = None
        try:
            async with self._slot(upstream.name, ex):
                # One deadline per request: first the response headers (read_timeout), then
                # rescheduled after every chunk (stream_idle_timeout, max_stream_duration).
                try:
                    async with asyncio.timeout(self.limits.read_timeout) as deadline:
                        response = await session.request(
                            ex.method, URL(target, encoded=True), **_body_args(headers, body),
                            allow_redirects=False)
                        await self._relay(ex, response, send, deadline)
                except TimeoutError as exc:
                    if isinstance(exc, aiohttp.ConnectionTimeoutError):
                        raise GatewayError(504, f"could not connect to {upstream.name} at "
                                           f"{upstream.base_url} within "
                                           f"{self.limits.connect_timeout:g}s "
                                           "(limits.connect_timeout)") from None
                    if not ex.responded:
                        raise GatewayError(504, f"{upstream.name} sent no response within "
                                           f"{self.limits.read_timeout:g}s (limits.read_timeout;"
                                           f" {target.split('?')[0]})") from None
                    if not ex.recorded:
                        ex.reading = ex.meter.finish() if ex.meter is not None else None
                        ex.error = self._cut_reason(ex)
                        await self._account(ex)
                except aiohttp.ClientError as exc:
                    if ex.responded:
                        raise
                    raise GatewayError(502, f"cannot reach {upstream.name} at "
                                       f"{upstream.base_url}: {exc.__class__.__name__}") from None
        except asyncio.CancelledError:
            if ex.meter is not None and ex.reading is None:
                ex.reading = ex.meter.finish()  # record the usage seen before the cut
            if not ex.client_gone:
                ex.error = ex.error or (
                    "cut by Steward's shutdown: still running when server.drain_timeout "
                    f"({self.draining:g}s) ran out" if self.draining
                    else "cancelled inside Steward")
                await self._account(ex)
                raise
            task.uncancel()
            ex.error = ex.error or "client disconnected"
            ex.status = ex.status or 499
        finally:
            watcher.cancel()
            if response is not None:
                response.close()
            self._release(session)

    def _release(self, session: aiohttp.ClientSession) -> None:
        left = self._in_use[session] - 1
        if left:
            self._in_use[session] = left
            return
        del self._in_use[session]
        if session not in self.sessions.values():  # retired by a reload while in use
            self._close(session)

    def _close(self, session: aiohttp.ClientSession) -> None:
        task = asyncio.ensure_future(session.close())
        self._closing.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._closing.discard)

    def _cut_reason(self, ex: Exchange) -> str:
        # Same clock as the deadline that fired: the loop's.
        if ex.stream_end_at and asyncio.get_running_loop().time() >= ex.stream_end_at - 0.001:
            return "response exceeded limits.max_stream_duration; cut"
        return "upstream silent for longer than limits.stream_idle_timeout; cut"

    async def _relay(self, ex: Exchange, response: aiohttp.ClientResponse, send: Send,
                     deadline: asyncio.Timeout) -> None:
        assert ex.upstream is not None and ex.route is not None
        ex.status = response.status
        content_type = response.headers.get("Content-Type", "")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        ex.stream = content_type.startswith("text/event-stream") or (
            ex.route.endpoint == "streamGenerateContent")
        meter: Meter = ex.upstream.fmt.meter(ex.route, response.status, content_type,
                                             self.limits.max_sse_line_bytes)
        if encoding in ("gzip", "deflate"):
            meter = DecodingMeter(meter, encoding)
        ex.meter = meter
        out_headers = [(k.lower(), v) for k, v in response.raw_headers
                       if k.lower() not in HOP_BY_HOP or k.lower() == b"content-length"]
        out_headers.append((REQUEST_ID_HEADER, ex.id.encode()))
        ex.responded = True
        capture = ex.capture
        if capture is not None:
            capture.response_status = response.status
            capture.response_headers = out_headers
        await send({"type": "http.response.start", "status": response.status,
                    "headers": out_headers})
        remaining = response.content_length if "Transfer-Encoding" not in response.headers \
            else None
        closed = _until_close(response)
        loop = asyncio.get_running_loop()
        idle = self.limits.stream_idle_timeout
        end_at = loop.time() + self.limits.max_stream_duration - (time.perf_counter() - ex.t0)
        ex.stream_end_at = end_at
        deadline.reschedule(min(loop.time() + idle, end_at))
        try:
            async for chunk in response.content.iter_any():
                deadline.reschedule(min(loop.time() + idle, end_at))
                if ex.first_byte_at is None:
                    ex.first_byte_at = time.perf_counter()
                meter.feed(chunk)
                if capture is not None:
                    capture.add(chunk)  # past a size, on to a temporary file
                if remaining is not None:
                    remaining -= len(chunk)
                    if remaining <= 0:  # the caller is complete once this chunk lands
                        ex.reading = meter.finish()
                        await self._account(ex)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except aiohttp.ClientError as exc:
            ex.reading = meter.finish()
            ex.error = f"upstream failed mid-response: {exc.__class__.__name__}"
            await self._account(ex)
            return  # returning without finishing makes the server cut the connection
        broken = closed.exception() if closed is not None and closed.done() else None
        if broken is not None:
            # Only the close ended this body, and it was a reset, not a clean end: the caller
            # must see the same break, as it would calling the provider directly.
            ex.reading = meter.finish()
            cause = broken.__cause__ or broken
            ex.error = f"upstream failed mid-response: {cause.__class__.__name__}"
            await self._account(ex)
            return
        if not ex.recorded:
            ex.reading = meter.finish()
            await self._account(ex)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _account(self, ex: Exchange) -> None:
        """Write the record before the caller sees the end of the response."""
        if ex.recorded:
            return
        ex.recorded = True
        if ex.key is None:
            return  # no valid gateway key: counted in steward_auth_refusals_total, no record
        ex.finished_at = time.perf_counter()
        self.served += 1
        record = ex.record()
        record.update(self.pricer.cost(record))
        if ex.capture is not None:
            ex.capture.meta = {k: record[k] for k in BODY_META}
        await self.spool.append(record)
        self.metrics.observe(record)
        if self.telemetry is not None:
            self.telemetry.submit(ex, record)  # one append; spans are built in the background
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s %s %s", record["status"], record["provider"],
                            record["model"], record["path"],
                            extra={"access": {k: record.get(k) for k in ACCESS_FIELDS}})


class Limiter:
    """A semaphore with a bounded queue: past it, callers are refused at once."""

    __slots__ = ("max_waiting", "semaphore", "waiting")

    def __init__(self, concurrent: int, queue: int):
        self.semaphore = asyncio.Semaphore(concurrent)
        self.max_waiting = queue
        self.waiting = 0

    async def acquire(self, status: int, message: str) -> None:
        if self.semaphore.locked():
            if self.waiting >= self.max_waiting:
                raise GatewayError(status, message, headers={"Retry-After": "1"})
            self.waiting += 1
            try:
                await self.semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self.semaphore.acquire()

    def release(self) -> None:
        self.semaphore.release()


def _until_close(response: aiohttp.ClientResponse) -> asyncio.Future[None] | None:
    """For a body with neither length nor chunks (read until the upstream closes), the future
    of the close: aiohttp ends such a body cleanly on a reset too, and only this tells them
    apart (it fails with the reset). None for bodies framed any other way."""
    if ("Content-Length" in response.headers or "Transfer-Encoding" in response.headers
            or response.connection is None or response.connection.protocol is None):
        return None
    closed = response.connection.protocol.closed
    if closed is not None:
        closed.add_done_callback(lambda f: f.cancelled() or f.exception())  # always retrieved
    return closed


def _on_disconnect(watcher: asyncio.Future[dict[str, Any]], ex: Exchange,
                   task: asyncio.Task[Any]) -> None:
    if watcher.cancelled() or watcher.exception() is not None:
        return
    if watcher.result().get("type") == "http.disconnect" and not ex.recorded:
        ex.client_gone = True
        task.cancel()


LARGE_REQUEST = 1024 * 1024
PIECE = 256 * 1024


def _body_args(headers: list[tuple[str, str]], body: bytes | bytearray) -> dict[str, Any]:
    """A large body goes upstream in pieces, each written once the socket takes the last, so
    it is never copied whole into a transport buffer; a small one in a single write."""
    if len(body) <= LARGE_REQUEST:
        return {"headers": headers, "data": body or None}
    return {"headers": [*headers, ("Content-Length", str(len(body)))],
            "data": _in_pieces(memoryview(body))}


async def _in_pieces(view: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(view), PIECE):
        yield view[start:start + PIECE]


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"request body is larger than Steward's limit of {limit} bytes "
                        "(limits.max_body_bytes)")


def _find_model(body: bytes | bytearray) -> str | None:
    """The request's "model" without decoding the whole body (which can be 32 MiB of prompt).

    bytes.find is memchr-fast; a match preceded by a backslash is inside a string, not a key.
    """
    start = 0
    while True:
        at = body.find(b'"model"', start)
        if at < 0:
            return None
        start = at + 7
        if at > 0 and body[at - 1] == 0x5C:
            continue
        rest = body[start:start + 512].lstrip()
        if rest[:1] != b":":
            continue
        rest = rest[1:].lstrip()
        if rest[:1] != b'"':
            continue
        end = rest.find(b'"', 1)
        while end > 0 and rest[end - 1] == 0x5C:
            end = rest.find(b'"', end + 1)
        if end > 0:
            try:
                return rest[1:end].decode()
            except UnicodeDecodeError:
                return None
        return None


async def _send_simple(send: Send, status: int, body: bytes, request_id: str,
                       extra: dict[str, str]) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (REQUEST_ID_HEADER, request_id.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
