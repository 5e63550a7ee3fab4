"""A loopback metadata collector: records every upload, answers as scripted, and drops
repeated Idempotency-Keys as a real receiver would."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Upload:
    key: str
    headers: dict[str, str]
    records: list[dict[str, Any]]
    status: int


@dataclass
class Collector:
    port: int = 0
    uploads: list[Upload] = field(default_factory=list)
    plan: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # next answers
    accepted_keys: set[str] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def start(self) -> Collector:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="collector")
        self._thread.start()
        assert ready.wait(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/ingest", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp has already undone Content-Encoding: gzip
        if request.headers.get("Content-Type") == "application/json":
            records = json.loads(raw)["records"]
        else:
            records = [json.loads(line) for line in raw.splitlines()]
        status, headers = self.plan.pop(0) if self.plan else (200, {})
        key = request.headers.get("Idempotency-Key", "")
        self.uploads.append(Upload(key, dict(request.headers), records, status))
        if 200 <= status < 300:
            self.accepted_keys.add(key)
        return web.json_response({"ok": status < 300}, status=status, headers=headers)

    def accepted(self) -> list[dict[str, Any]]:
        """Records of accepted batches, each batch once (duplicate keys dropped)."""
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        for upload in self.uploads:
            if 200 <= upload.status < 300 and upload.key not in seen:
                seen.add(upload.key)
                out.extend(upload.records)
        return out
