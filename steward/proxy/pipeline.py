"""The request hot path, as a raw ASGI handler: one Exchange through named stages, in order.

    auth -> route -> credentials -> body -> admit -> forward -> relay -> account -> hand-off

Per request: one hash and dict lookup for the key, one upstream call over a pooled connection,
chunk-by-chunk relay, usage read from the bytes as they pass, one spool write and one hand-off
of the bodies to the background writer. No database, no re-serialised bodies, nothing blocking
in the event loop. The record is written in one place (`account`), once, on every path, before
the caller sees the end of the response: what a stage decides to send last waits in
`Exchange.ending` until the record is down.
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

from steward.bodies.journal import CaptureJournal
from steward.bodies.writer import Capture, object_key
from steward.config import LimitsConfig
from steward.daemon import logs
from steward.daemon.metrics import Metrics
from steward.errors import GatewayError
from steward.pricing.pricer import Pricer
from steward.providers.base import DecodingMeter, Meter
from steward.proxy.access import Refusals, authorize
from steward.proxy.credentials import unsigned_headers, upstream_credential
from steward.proxy.exchange import Exchange
from steward.proxy.forwarding import (
    HOP_BY_HOP,
    UNSAFE_BUT_SLASH,
    UNSAFE_PATH,
    UNSAFE_PATH_MESSAGE,
    find_gateway_key,
    split_headers,
    strip_gateway_keys,
    upstream_url,
)
from steward.proxy.limiter import Limiter
from steward.proxy.routing import Router
from steward.proxy.upstream import egress_proxy
from steward.records.spool import Spool
from steward.secrets.gateway_keys import KeyIndex
from steward.secrets.provider_keys import CredentialIndex

if TYPE_CHECKING:
    from steward.budgets.governor import Governor
    from steward.daemon.telemetry import Telemetry

log = logging.getLogger("steward.proxy")
ACCESS_FIELDS = ("id", "api_key_id", "provider", "model", "response_model", "status",
                 "input_tokens", "output_tokens", "cost", "latency_ms", "ttft_ms", "error")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

REQUEST_ID_HEADER = b"x-majordomo-request-id"


class Proxy:
    def __init__(self, router: Router, keys: KeyIndex, credentials: CredentialIndex,
                 sessions: dict[str, aiohttp.ClientSession], spool: Spool, pricer: Pricer,
                 bodies: CaptureJournal | None, metrics: Metrics, limits: LimitsConfig):
        self.bodies = bodies
        self.metrics = metrics
        self.refusals = Refusals(metrics.refused)
        self.key_slots: dict[str, Limiter] = {}  # made anew by configure()
        self.pricer = pricer  # replaced whole when the table or overrides change
        self.node = ""  # server.node_name, set by the gateway
        self.keys = keys
        self.credentials = credentials
        self.spool = spool
        self.telemetry: Telemetry | None = None  # set by the gateway when [telemetry] is on
        self.governor: Governor | None = None  # budgets and rate limits, set by the gateway
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex = Exchange(method=scope["method"], path=scope["path"], query=scope["query_string"],
                      raw_path=scope["raw_path"], headers=scope["headers"])
        try:
            try:
                await self._stages(ex, scope, receive, send)
            except GatewayError as err:
                self._answer_error(ex, err)
            except asyncio.CancelledError:
                ex.error = ex.error or (
                    "cut by Steward's shutdown: still running when server.drain_timeout "
                    f"({self.draining:g}s) ran out" if self.draining
                    else "cancelled inside Steward")
                raise
            except Exception:
                log.exception("request %s failed inside Steward", ex.id)
                self._answer_error(ex, GatewayError(
                    500, f"Steward failed to handle this request (request id {ex.id}); the "
                    "gateway log has the details"))
            finally:
                await self._account(ex)  # the one place a record is written, on every path
            capture = ex.capture
            if capture is not None and self.bodies is not None and self.bodies.write_now(capture):
                capture = None  # journaled with one write(), before the end, as the record is
            for message in ex.ending:  # the end of the response, now that the record is down
                await send(message)
            if capture is not None and self.bodies is not None:
                await self.bodies.submit(capture)  # a large one: after the caller has it all
        finally:
            self.buffered_bytes -= ex.buffered

    async def _stages(self, ex: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        """Authentication comes first: a request without a valid key decides no label and
        leaves no record. The scope check comes before any stored credential is looked at."""
        self._auth(ex, scope)
        headers = self._route(ex, scope)
        headers = self._credentials(ex, headers)
        body = await self._read_body(ex, scope, receive)
        assert ex.route is not None
        ex.request_model = ex.route.model or _find_model(body)
        if self.governor is not None and self.governor.active:
            ex.admission = await self.governor.admit(ex, body, self.pricer)
        self._capture(ex, scope, body)
        await self._forward(ex, headers, body, receive, send)  # and relay

    # -- auth ------------------------------------------------------------------------------

    def _auth(self, ex: Exchange, scope: Scope) -> None:
        presented = find_gateway_key(scope["headers"], ex.query)
        if not presented:
            self._refuse(ex, "missing", scope)
            raise GatewayError(401, "Missing X-Majordomo-Key header: send your Steward gateway "
                               "key (create one with `steward keys add NAME`).")
        ex.key = self.keys.authenticate(presented, time.time())
        if ex.key is None:
            self._refuse(ex, "invalid", scope)
            raise GatewayError(401, "Invalid X-Majordomo-Key: the key is unknown, revoked or "
                               "expired. Check it, or create one with `steward keys add NAME`.")

    def _refuse(self, ex: Exchange, reason: str, scope: Scope) -> None:
        client = scope.get("client")
        self.refusals.refused(reason, ex.method, ex.path, client[0] if client else None)

    # -- route -----------------------------------------------------------------------------

    def _route(self, ex: Exchange, scope: Scope) -> list[tuple[str, str]]:
        """The request's shape checked, its headers sorted (forwarded, tags, provider), the
        upstream and route chosen, and the key's scopes checked against the route."""
        assert ex.key is not None
        self._check_request_shape(ex, scope)
        split = split_headers(scope["headers"], self.max_tags, self.max_tag_bytes)
        ex.tags = split.tags
        ex.query = strip_gateway_keys(ex.query)
        ex.upstream, ex.route = self.router.resolve(ex.method, ex.path, split.provider)
        if ex.encoded_slash and not ex.upstream.fmt.accepts_encoded_slash(ex.raw_path):
            raise GatewayError(400, UNSAFE_PATH_MESSAGE)
        authorize(ex.key, ex.upstream.name, ex.route, ex.method, ex.path)
        return split.forward

    def _check_request_shape(self, ex: Exchange, scope: Scope) -> None:
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
            if UNSAFE_BUT_SLASH.search(raw_path):
                raise GatewayError(400, UNSAFE_PATH_MESSAGE)
            ex.encoded_slash = True  # the format routed to decides (_route)
        names = {n for n, _ in headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 6.3: the two framings disagree on where the body ends, so bytes after
            # it could run as a second request; refuse, and close so none does.
            raise GatewayError(400, "the request has both Transfer-Encoding and Content-Length;"
                               " send one of them", headers={"Connection": "close"})

    # -- credentials -----------------------------------------------------------------------

    def _credentials(self, ex: Exchange, headers: list[tuple[str, str]]
                     ) -> list[tuple[str, str]]:
        assert ex.upstream is not None and ex.key is not None
        upstream, key_id = ex.upstream, ex.key.id
        if upstream.fmt.caller_auth_headers:  # signed in _forward, over the exact bytes sent
            ex.auth = self.credentials.auth(upstream.name, key_id, time.time())
            return unsigned_headers(upstream.fmt, upstream.name, headers, ex.auth)
        headers, ex.query = upstream_credential(
            upstream.fmt, upstream.name, upstream.allow_caller_credentials, headers, ex.query,
            lambda: self.credentials.lookup(upstream.name, key_id, time.time()))
        return headers

    # -- body ------------------------------------------------------------------------------

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

    def _capture(self, ex: Exchange, scope: Scope, body: bytes | bytearray) -> None:
        """Keep what the body writer needs, unless bodies are off or the disk is low (then
        the record says why and the request is served all the same)."""
        if self.bodies is None:
            return
        assert ex.key is not None
        ex.body_error = self.bodies.refuse()
        if ex.body_error is None:
            stored_as = object_key(ex.key.id, ex.id, ex.started_at)
            ex.capture = Capture(stored_as, {}, scope["headers"], body, scope["query_string"])
            ex.body_ref = self.bodies.url(stored_as)

    # -- forward ---------------------------------------------------------------------------

    async def _forward(self, ex: Exchange, headers: list[tuple[str, str]], body: bytes | bytearray,
                       receive: Receive, send: Send) -> None:
        """One upstream call within the provider's (and key's) concurrency, under one deadline;
        a caller that goes away cancels it."""
        assert ex.upstream is not None and ex.route is not None
        upstream, route = ex.upstream, ex.route
        target = upstream_url(upstream.fmt.upstream_base(upstream.base_url, route, ex.query),
                              ex.raw_path, ex.path, route.upstream_path, ex.query)
        task = asyncio.current_task()
        assert task is not None
        if ex.auth is not None:
            headers = ex.auth.apply(ex.method, target, headers, body)
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
                        url = URL(target, encoded=True)
                        response = await session.request(
                            ex.method, url, **_body_args(headers, body), **egress_proxy(url),
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
                    self._cut(ex, self._cut_reason(ex))
                except aiohttp.ClientError as exc:
                    if ex.responded:
                        raise
                    raise GatewayError(502, f"cannot reach {upstream.name} at "
                                       f"{upstream.base_url}: {exc.__class__.__name__}") from None
        except asyncio.CancelledError:
            if ex.meter is not None and ex.reading is None:
                ex.reading = ex.meter.finish()  # record the usage seen before the cut
            if not ex.client_gone:
                raise
            task.uncancel()
            if ex.reading is None or not ex.reading.complete:  # else it had the whole answer
                ex.error = ex.error or "client disconnected"  # and hung up before the end
                ex.status = ex.status or 499
        finally:
            watcher.cancel()
            if response is not None:
                response.close()
            self._release(session)

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

    # -- relay -----------------------------------------------------------------------------

    async def _relay(self, ex: Exchange, response: aiohttp.ClientResponse, send: Send,
                     deadline: asyncio.Timeout) -> None:
        """The response as it comes, chunk by chunk, read for usage on the way. Its last
        piece is left in ex.ending, for after the record; a broken upstream leaves none, so
        the caller's connection is cut as the upstream's was."""
        assert ex.upstream is not None and ex.route is not None
        ex.status = response.status
        content_type = response.headers.get("Content-Type", "")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        ex.stream = ex.upstream.fmt.is_stream(ex.route, content_type)
        meter: Meter = ex.upstream.fmt.meter(ex.route, response.status, content_type,
                                             self.limits.max_sse_line_bytes)
        if encoding in ("gzip", "deflate"):
            meter = DecodingMeter(meter, encoding)
        ex.meter = meter
        ex.response_headers = [(k.lower(), v) for k, v in response.raw_headers
                               if k.lower() not in HOP_BY_HOP or k.lower() == b"content-length"]
        ex.response_headers.append((REQUEST_ID_HEADER, ex.id.encode()))
        ex.responded = True
        await send({"type": "http.response.start", "status": response.status,
                    "headers": ex.response_headers})
        remaining = response.content_length if "Transfer-Encoding" not in response.headers \
            else None
        closed = _until_close(response)
        capture = ex.capture
        loop = asyncio.get_running_loop()
        idle = self.limits.stream_idle_timeout
        end_at = loop.time() + self.limits.max_stream_duration - (time.perf_counter() - ex.t0)
        ex.stream_end_at = end_at
        deadline.reschedule(min(loop.time() + idle, end_at))
        last = b""
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
                    if remaining <= 0:  # this completes the caller's body: it waits for
                        last += chunk   # the record (the loop still reads to the end, so
                        continue        # the connection goes back to the pool)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except aiohttp.ClientError as exc:
            self._cut(ex, f"upstream failed mid-response: {exc.__class__.__name__}")
            return
        broken = closed.exception() if closed is not None and closed.done() else None
        if broken is not None:
            # Only the close ended this body, and it was a reset, not a clean end: the caller
            # must see the same break, as it would calling the provider directly.
            cause = broken.__cause__ or broken
            self._cut(ex, f"upstream failed mid-response: {cause.__class__.__name__}")
            return
        ex.reading = meter.finish()
        ex.ending = [{"type": "http.response.body", "body": last, "more_body": False}]

    def _cut(self, ex: Exchange, why: str) -> None:
        """The response breaks off here: the usage read so far, and why. No ending is sent."""
        ex.reading = ex.meter.finish() if ex.meter is not None else None
        ex.error = why

    def _cut_reason(self, ex: Exchange) -> str:
        # Same clock as the deadline that fired: the loop's.
        if ex.stream_end_at and asyncio.get_running_loop().time() >= ex.stream_end_at - 0.001:
            return "response exceeded limits.max_stream_duration; cut"
        return "upstream silent for longer than limits.stream_idle_timeout; cut"

    # -- errors ----------------------------------------------------------------------------

    def _answer_error(self, ex: Exchange, err: GatewayError) -> None:
        """The caller's answer for a failure: in the provider's error shape, with the status
        the record keeps. Once response headers are out there is no answer to give: the
        record says what broke and the connection is cut."""
        if ex.responded:
            ex.error = ex.error or err.message
            ex.ending = []
            return
        fmt = ex.upstream.fmt if ex.upstream else self.router.error_format(ex.method, ex.path)
        ex.status, ex.error = err.status, err.record_error or err.message
        body = fmt.error_body(err.status, err.message)
        ex.responded = True
        ex.response_headers = [(b"content-type", b"application/json"),
                               (b"content-length", str(len(body)).encode()),
                               (REQUEST_ID_HEADER, ex.id.encode())]
        ex.response_headers += [(k.lower().encode(), v.encode()) for k, v
                                in {**fmt.error_headers(err.status), **err.headers}.items()]
        ex.error_body = body
        ex.ending = [{"type": "http.response.start", "status": err.status,
                      "headers": ex.response_headers},
                     {"type": "http.response.body", "body": body, "more_body": False}]

    # -- account ---------------------------------------------------------------------------

    async def _account(self, ex: Exchange) -> None:
        """The record: priced, spooled and counted, before the caller sees the end."""
        if ex.key is None:
            return  # no valid gateway key: counted in steward_auth_refusals_total, no record
        ex.finished_at = time.perf_counter()
        self.served += 1
        record = ex.record(self.pricer, self.node)
        if ex.admission is not None and self.governor is not None:
            self.governor.settle(ex.admission, record)
        if ex.capture is not None:
            ex.capture.finish(record, ex.status if ex.responded else None, ex.response_headers,
                              ex.error_body)
        await self.spool.append(record)
        self.metrics.observe(record)
        if self.telemetry is not None:
            self.telemetry.submit(ex, record)  # one append; spans are built in the background
        if logs.ACCESS.enabled:
            logs.ACCESS.write(f"{record['status']} {record['provider']} {record['model']} "
                              f"{record['path']}", {k: record.get(k) for k in ACCESS_FIELDS})


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
    if watcher.result().get("type") == "http.disconnect" and not ex.ending:
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
