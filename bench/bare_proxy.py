"""The floor under Steward's hot path: the same server stack doing nothing but proxy.

Hypercorn (one worker, uvloop) serving a raw ASGI handler that forwards each request to the
upstream over one pooled aiohttp session and relays the answer chunk by chunk: no key, no
route, no usage, no record, no bodies, no metrics, no log. `make bench` runs it in the same
cells as Steward, so the table shows what the stack costs before Steward does anything.

    python bench/bare_proxy.py PORT UPSTREAM_URL     (prints "ready" once listening)
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}


def make_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    assert session is not None
                    await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in HOP]
        assert session is not None
        async with session.request(scope["method"], upstream + scope["path"], data=body,
                                   headers=headers, allow_redirects=False) as response:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(k.lower(), v) for k, v in response.raw_headers
                                    if k.lower() not in HOP - {b"content-length"}]})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def main(port: int, upstream: str) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    print("ready", flush=True)
    await serve(make_app(upstream), config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2].rstrip("/")))
