"""A loopback server speaking the three providers' documented wire formats, streams included.

Responses are deterministic, so a test can compare an SDK call made through Steward with the
same call made directly. The `x-fake-behavior` request header (which Steward forwards like any
other header) asks for failures: `status:429`, `gzip`, `bad-gzip`, `delay:SECONDS`, `stall`
(after the first event), `hold` (before any answer), `reset` (mid-stream), `pace:SECONDS`,
`reset-before-headers`, `not-json`, `short-content-length`, and hostile ones: `unframed` (a
body without a length, ended by closing), `reset-unframed` (the same cut by a TCP reset),
`sse-not-json`, `bomb:MIB` (gzip inflating to MIB), `endless-line:MIB` (a stream with one line
of MIB), `big-stream:MIB` (a chat stream of MIB of ordinary events).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import socket
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import CatchAllFake, LoopbackServer

CHAT_USAGE = {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37,
              "prompt_tokens_details": {"cached_tokens": 5, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0}}
RESPONSES_USAGE = {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 10},
                   "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 8},
                   "total_tokens": 50}
ANTHROPIC_USAGE = {"input_tokens": 40, "cache_creation_input_tokens": 300,
                   "cache_read_input_tokens": 200, "output_tokens": 15,
                   "cache_creation": {"ephemeral_5m_input_tokens": 100,
                                      "ephemeral_1h_input_tokens": 200},
                   "service_tier": "standard"}
GEMINI_USAGE = {"promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 85,
                "cachedContentTokenCount": 10, "thoughtsTokenCount": 15}
TEXT_PIECES = ["Hello", " from", " the", " fake"]
CREATED = 1_700_000_000


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(mib: int) -> bytes:
    """A small gzip body that inflates to MIB MiB (of spaces: still JSON's whitespace)."""
    if mib not in _BOMBS:
        gz = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = b" " * (1024 * 1024)
        _BOMBS[mib] = b"".join([gz.compress(b"{"), *(gz.compress(block) for _ in range(mib)),
                                gz.compress(b"}"), gz.flush()])
    return _BOMBS[mib]


def dated(model: str) -> str:
    """The provider reports a dated snapshot of the model asked for."""
    return model if re.search(r"-\d{4}-\d{2}-\d{2}$|-\d{8}$", model) else f"{model}-2024-08-06"


@dataclass
class Seen:
    method: str
    path: str
    query: str
    raw_path: str
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def of(cls, request: web.Request, body: bytes) -> Seen:
        return cls(request.method, request.path, request.query_string,
                   request.raw_path.split("?")[0], dict(request.headers), body,
                   list(request.raw_headers))


@dataclass
class FakeUpstream(CatchAllFake):
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    closed_streams: int = 0
    stream_closed: threading.Event = field(default_factory=threading.Event)
    _server: LoopbackServer | None = None
    name = "fake-upstream"
    max_body = 1024**3

    def last(self) -> Seen:
        return self.requests[-1]

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen.of(request, body))
        behavior = request.headers.get("x-fake-behavior", "")
        if behavior.startswith("delay:"):
            await asyncio.sleep(float(behavior.split(":", 1)[1]))
        path = request.path
        if path.startswith("/v1/messages"):
            kind = "anthropic"
        elif ":" in path.rsplit("/", 1)[-1]:
            kind = "gemini"
        else:
            kind = "openai"
        try:  # like the real APIs: a body that is not a JSON object, or a bad model, is a 400
            payload: dict[str, Any] = json.loads(body) if body else {}
        except (ValueError, RecursionError):
            return self.error(kind, 400)
        if not isinstance(payload, dict) or not isinstance(payload.get("model", ""), str):
            return self.error(kind, 400)
        if behavior.startswith("status:"):
            return self.error(kind, int(behavior.split(":", 1)[1]))
        if behavior == "hold":  # never answer; note when the caller (Steward) gives up
            await self._wait_for_close(request)
            return web.Response()
        if behavior == "bad-gzip":
            return web.Response(body=b"this is not gzip", content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        if behavior == "reset-before-headers":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        hostile = await self.hostile(request, behavior)
        if hostile is not None:
            return hostile
        if behavior == "not-json":
            return web.Response(body=b"<html>upstream proxy error</html>",
                                content_type="application/json")
        if behavior == "short-content-length":
            assert request.transport is not None
            request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: 500\r\n\r\n{\"partial\": tr")
            request.transport.close()
            return web.Response()
        if kind == "anthropic":
            if path.endswith("/count_tokens"):
                return web.json_response({"input_tokens": 42})
            if payload.get("stream"):
                return await self.sse(request, self.anthropic_events(payload), behavior)
            return self.json(self.anthropic_message(payload), behavior)
        if kind == "gemini":
            model, method = path.rsplit("/", 1)[-1].split(":")
            if method == "streamGenerateContent":
                if request.query.get("alt") == "sse":
                    events = [(None, json.dumps(e)) for e in self.gemini_chunks(model)]
                    return await self.sse(request, events, behavior)
                return await self.json_array(request, self.gemini_chunks(model))
            if method == "countTokens":
                return web.json_response({"totalTokens": 50})
            return self.json(self.gemini_response(model), behavior)
        if path.endswith("/models"):
            return web.json_response({"object": "list", "data": [
                {"id": "gpt-4o", "object": "model", "created": CREATED, "owned_by": "openai"}]})
        if path.endswith("/embeddings"):
            return web.json_response(self.embeddings(payload))
        if path.endswith("/responses"):
            if payload.get("stream"):
                return await self.sse(request, self.responses_events(payload), behavior)
            return self.json(self.responses_object(payload), behavior)
        if path.endswith("/chat/completions"):
            usage = CHAT_USAGE
            if behavior.startswith("completion-tokens:"):  # a usage chosen by the test
                n = int(behavior.split(":", 1)[1])
                usage = {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}
            if payload.get("stream"):
                return await self.sse(request, self.chat_events(payload, usage), behavior)
            return self.json(self.chat_completion(payload, usage), behavior)
        return self.error(kind, 404)

    # -- hostile upstreams ------------------------------------------------------------------

    async def hostile(self, request: web.Request, behavior: str) -> web.StreamResponse | None:
        """Responses crafted to make a proxy lie or spend memory; None for other behaviors."""
        if behavior in ("unframed", "reset-unframed"):  # no length: the close ends the body
            transport = request.transport
            assert transport is not None
            body = json.dumps(self.chat_completion({"model": "gpt-4o"})).encode()
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\n\r\n")
            if behavior == "unframed":
                transport.write(body)
                transport.close()  # a FIN: the body is complete
                return web.Response()
            transport.write(body[:40])
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # with SO_LINGER 0: a RST, not a FIN
            return web.Response()
        if behavior == "sse-not-json":
            events = [(None, "<html>bad gateway</html>"), (None, "upstream timed out")]
            return await self.sse(request, events, "")
        if behavior.startswith("bomb:"):
            return web.Response(body=gzip_bomb(int(behavior.split(":", 1)[1])),
                                content_type="application/json",
                                headers={"Content-Encoding": "gzip"})
        if behavior.startswith("big-stream:"):
            size = int(behavior.split(":", 1)[1]) * 1024 * 1024
            response, events = await self._chat_stream_started(request)
            delta = json.loads(events[1][1])
            delta["choices"][0]["delta"]["content"] = "token " * 150
            frame = f"data: {json.dumps(delta)}\n\n".encode()
            batch = frame * max(1, 65536 // len(frame))
            for _ in range(size // len(batch)):
                await response.write(batch)
            for _, data in events[-3:]:
                await response.write(f"data: {data}\n\n".encode())
            await response.write_eof()
            return response
        if behavior.startswith("endless-line:"):
            size = int(behavior.split(":", 1)[1]) * 1024 * 1024
            response, events = await self._chat_stream_started(request)
            await response.write(b"data: ")
            piece = b"x" * 65536
            for _ in range(size // len(piece)):
                await response.write(piece)
            await response.write(b"\n\n")
            for _, data in events[1:]:
                await response.write(f"data: {data}\n\n".encode())
            await response.write_eof()
            return response
        return None

    # -- transport helpers ------------------------------------------------------------------

    async def _chat_stream_started(self, request: web.Request
                                   ) -> tuple[web.StreamResponse, list[tuple[str | None, str]]]:
        """An OpenAI chat stream's response, prepared, with its first event already sent."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = self.chat_events({"model": "gpt-4o", "stream": True,
                                   "stream_options": {"include_usage": True}})
        await response.write(f"data: {events[0][1]}\n\n".encode())
        return response, events

    async def _wait_for_close(self, request: web.Request, limit: float = 120.0) -> None:
        """Hold a stream open until the peer (Steward) closes it; count the close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            if request.transport is None or request.transport.is_closing():
                self.closed_streams += 1
                self.stream_closed.set()
                return
            await asyncio.sleep(0.02)

    def json(self, obj: Any, behavior: str) -> web.Response:
        data = json.dumps(obj).encode()
        if behavior == "gzip":
            return web.Response(body=gzip.compress(data), content_type="application/json",
                                headers={"Content-Encoding": "gzip", "x-upstream": "fake"})
        return web.Response(body=data, content_type="application/json",
                            headers={"x-upstream": "fake"})

    async def sse(self, request: web.Request, events: list[tuple[str | None, str]],
                  behavior: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache",
                                               "x-upstream": "fake"})
        await response.prepare(request)
        for index, (event, data) in enumerate(events):
            frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
            await response.write(frame.encode())
            if index == 1 and behavior == "stall":
                await self._wait_for_close(request)
                return response
            if index == 1 and behavior == "reset":
                assert request.transport is not None
                request.transport.abort()
                return response
            if behavior.startswith("pace:") and index < len(events) - 1:
                await asyncio.sleep(float(behavior.split(":", 1)[1]))
        if behavior == "hold-end":  # every event sent, the end never: until the caller leaves
            await self._wait_for_close(request)
            return response
        await response.write_eof()
        return response

    async def json_array(self, request: web.Request, elements: list[Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for index, element in enumerate(elements):
            await response.write((("[" if index == 0 else ",\r\n") + json.dumps(element)).encode())
        await response.write(b"]")
        await response.write_eof()
        return response

    def error(self, kind: str, status: int) -> web.Response:
        message = f"fake upstream error {status}"
        if kind == "anthropic":
            body: Any = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
        elif kind == "gemini":
            body = {"error": {"code": status, "message": message, "status": "RESOURCE_EXHAUSTED"}}
        else:
            body = {"error": {"message": message, "type": "rate_limit_error", "param": None,
                              "code": "rate_limit_exceeded"}}
        return web.json_response(body, status=status)

    # -- OpenAI -----------------------------------------------------------------------------

    def chat_completion(self, payload: dict[str, Any], usage: dict[str, Any] = CHAT_USAGE
                        ) -> dict[str, Any]:
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED,
                "model": dated(payload.get("model", "gpt-4o")), "system_fingerprint": "fp_fake",
                "service_tier": "default",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "".join(TEXT_PIECES),
                                         "refusal": None}}],
                "usage": usage}

    def chat_events(self, payload: dict[str, Any], usage: dict[str, Any] = CHAT_USAGE
                    ) -> list[tuple[str | None, str]]:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                "model": dated(payload.get("model", "gpt-4o")), "system_fingerprint": "fp_fake"}
        extra = {"usage": None} if include_usage else {}
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}], **extra}]
        chunks += [{**base, "choices": [{"index": 0, "delta": {"content": piece},
                                         "finish_reason": None}], **extra}
                   for piece in TEXT_PIECES]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       **extra})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": usage})
        return [(None, json.dumps(c)) for c in chunks] + [(None, "[DONE]")]

    def responses_object(self, payload: dict[str, Any], status: str = "completed"
                         ) -> dict[str, Any]:
        return {"id": "resp_fake", "object": "response", "created_at": CREATED, "status": status,
                "model": dated(payload.get("model", "gpt-4o")), "parallel_tool_calls": True,
                "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
                "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
                "output": [{"type": "message", "id": "msg_fake", "status": "completed",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": "".join(TEXT_PIECES),
                                         "annotations": []}]}],
                "usage": RESPONSES_USAGE if status == "completed" else None}

    def responses_events(self, payload: dict[str, Any]) -> list[tuple[str | None, str]]:
        events: list[tuple[str | None, str]] = []
        created = self.responses_object(payload, status="in_progress")
        events.append(("response.created", json.dumps(
            {"type": "response.created", "sequence_number": 0, "response": created})))
        for index, piece in enumerate(TEXT_PIECES):
            events.append(("response.output_text.delta", json.dumps(
                {"type": "response.output_text.delta", "sequence_number": index + 1,
                 "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                 "delta": piece, "logprobs": []})))
        events.append(("response.completed", json.dumps(
            {"type": "response.completed", "sequence_number": len(TEXT_PIECES) + 1,
             "response": self.responses_object(payload)})))
        return events

    def embeddings(self, payload: dict[str, Any]) -> dict[str, Any]:
        vector = [0.25, -0.5, 0.125]
        if payload.get("encoding_format") == "base64":
            data: Any = base64.b64encode(struct.pack("<3f", *vector)).decode()
        else:
            data = vector
        return {"object": "list", "model": payload.get("model", "text-embedding-3-small"),
                "data": [{"object": "embedding", "index": 0, "embedding": data}],
                "usage": {"prompt_tokens": 8, "total_tokens": 8}}

    # -- Anthropic --------------------------------------------------------------------------

    def anthropic_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"id": "msg_fake", "type": "message", "role": "assistant",
                "model": dated(payload.get("model", "claude-sonnet-4-5")),
                "content": [{"type": "text", "text": "".join(TEXT_PIECES)}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": ANTHROPIC_USAGE}

    def anthropic_events(self, payload: dict[str, Any]) -> list[tuple[str | None, str]]:
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        message = {**self.anthropic_message(payload), "content": [], "stop_reason": None,
                   "usage": start_usage}
        events: list[tuple[str | None, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("ping", {"type": "ping"}),
        ]
        events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": piece}})
                   for piece in TEXT_PIECES]
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return [(name, json.dumps(data)) for name, data in events]

    # -- Gemini -----------------------------------------------------------------------------

    def gemini_response(self, model: str) -> dict[str, Any]:
        return {"candidates": [{"content": {"parts": [{"text": "".join(TEXT_PIECES)}],
                                            "role": "model"},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": GEMINI_USAGE, "modelVersion": model, "responseId": "fake"}

    def gemini_chunks(self, model: str) -> list[dict[str, Any]]:
        chunks = []
        for index, piece in enumerate(TEXT_PIECES):
            last = index == len(TEXT_PIECES) - 1
            usage = GEMINI_USAGE if last else {"promptTokenCount": 50,
                                               "candidatesTokenCount": index + 1,
                                               "totalTokenCount": 51 + index}
            chunk: dict[str, Any] = {
                "candidates": [{"content": {"parts": [{"text": piece}], "role": "model"},
                                "index": 0, **({"finishReason": "STOP"} if last else {})}],
                "usageMetadata": usage, "modelVersion": model, "responseId": "fake"}
            chunks.append(chunk)
        return chunks


if __name__ == "__main__":  # handy for poking at by hand: python -m tests.support.fake_upstream
    import time

    fake = FakeUpstream(port=9999).start()
    print(f"fake upstream on {fake.url}")
    while True:
        time.sleep(3600)
