"""A minimal, fast HTTP/1.1 upstream for the benchmark (raw asyncio protocol on uvloop).

Answers every POST with a fixed chat completion, or a 23-event SSE stream when the body asks
for `"stream":true`, so the gateway, not the upstream, is what gets measured.
"""

from __future__ import annotations

import asyncio
import json
import sys

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
EVENTS = [dict(CHUNK, choices=[{"index": 0, "delta": {"content": f"tok{i} "}}], usage=None)
          for i in range(21)]
EVENTS.append(dict(CHUNK, choices=[], usage=USAGE))
SSE_BODY = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in EVENTS)
SSE_BODY += b"data: [DONE]\n\n"


def response(body: bytes, content_type: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body)


JSON_RESPONSE = response(JSON_BODY, b"application/json")
SSE_RESPONSE = response(SSE_BODY, b"text/event-stream")


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

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
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                                  else None].strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4:total]
            self.buffer = self.buffer[total:]
            streaming = b'"stream":true' in body or b'"stream": true' in body
            self.transport.write(SSE_RESPONSE if streaming else JSON_RESPONSE)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port,
                                                            backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
