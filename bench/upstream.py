"""A minimal, fast HTTP/1.1 upstream for the benchmark (raw asyncio protocol on uvloop).

Answers every POST with a fixed chat completion (one write, with a Content-Length), or, when
the body asks for `"stream": true`, an OpenAI chat stream that really streams: 23 SSE events
(21 content deltas, the `include_usage` chunk, `[DONE]`) sent as HTTP/1.1 chunks one by one,
the first at once and each next one on the following tick of a shared timer (default 1 ms).
One timer for all streams keeps the mock's own CPU small, so the gateway, not the upstream, is
what gets measured, while a gateway that buffers or stalls a stream shows in its timings.

Usage: upstream.py PORT [EVENT_INTERVAL_MS]; prints "ready" once it listens.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import deque

import uvloop

USAGE = {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37,
         "prompt_tokens_details": {"cached_tokens": 5},
         "completion_tokens_details": {"reasoning_tokens": 4}}
JSON_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello from the benchmark."}}],
    "usage": USAGE}).encode()
CHUNK = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
         "model": "gpt-4o-2024-08-06"}
EVENTS = [dict(CHUNK, choices=[{"index": 0, "delta": {"content": f"tok{i} "},
                                "finish_reason": None}], usage=None) for i in range(20)]
EVENTS.append(dict(CHUNK, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   usage=None))
EVENTS.append(dict(CHUNK, choices=[], usage=USAGE))
SSE_EVENTS = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in EVENTS] + [b"data: [DONE]\n\n"]
assert len(SSE_EVENTS) == 23


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


JSON_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(JSON_BODY)).encode() + b"\r\nConnection: keep-alive\r\n\r\n"
                 + JSON_BODY)
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
# What each tick writes: the head with the first event, then one event each, the last one
# with the chunked body's terminator.
SSE_WRITES = ([SSE_HEAD + chunk(SSE_EVENTS[0])] + [chunk(e) for e in SSE_EVENTS[1:-1]]
              + [chunk(SSE_EVENTS[-1]) + b"0\r\n\r\n"])


class Ticker:
    """Advances every open stream by one event per tick; runs only while a stream is open."""

    def __init__(self, interval: float):
        self.interval = interval
        self.streams: dict[Upstream, int] = {}
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0.0  # when the next tick is due, on the loop's clock

    def start(self, conn: Upstream) -> None:
        conn.transport.write(SSE_WRITES[0])
        self.streams[conn] = 1
        if self.handle is None:
            loop = asyncio.get_running_loop()
            self.due = loop.time() + self.interval
            self.handle = loop.call_at(self.due, self.tick)

    def tick(self) -> None:
        finished = []
        for conn, sent in self.streams.items():
            if conn.transport.is_closing():
                finished.append(conn)
                continue
            conn.transport.write(SSE_WRITES[sent])
            if sent + 1 == len(SSE_WRITES):
                finished.append(conn)
            else:
                self.streams[conn] = sent + 1
        for conn in finished:
            del self.streams[conn]
        self.handle = None
        for conn in finished:
            conn.stream_done()  # may start the connection's next stream
        if self.streams and self.handle is None:
            # Due times on a fixed grid, so a late tick shortens the next wait and events keep
            # an average spacing of one interval (a timer re-armed with call_later drifts late).
            loop = asyncio.get_running_loop()
            self.due = max(self.due + self.interval, loop.time())
            self.handle = loop.call_at(self.due, self.tick)


TICKER = Ticker(0.001)


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.streaming = False
        self.pending: deque[bool] = deque()  # requests that arrived while a stream was open

    def connection_lost(self, exc: Exception | None) -> None:
        TICKER.streams.pop(self, None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15:line_end if line_end > 0 else None].strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4:total]
            self.buffer = self.buffer[total:]
            self.pending.append(b'"stream":true' in body or b'"stream": true' in body)
            self.answer()

    def answer(self) -> None:
        """Answer queued requests in order; a stream holds the ones behind it until it ends."""
        while self.pending and not self.streaming:
            if self.pending.popleft():
                self.streaming = True
                TICKER.start(self)
            else:
                self.transport.write(JSON_RESPONSE)

    def stream_done(self) -> None:
        self.streaming = False
        if not self.transport.is_closing():
            self.answer()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port,
                                                            backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        TICKER.interval = float(sys.argv[2]) / 1000
    uvloop.run(main(int(sys.argv[1])))
