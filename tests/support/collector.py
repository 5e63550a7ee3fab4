"""A loopback metadata collector: records every upload, answers as scripted, and drops
repeated Idempotency-Keys as a real receiver would. Given a token, it refuses (401) any
upload without that bearer token, as a real one would."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import LoopbackServer

MAJORDOMO_INGEST = "/api/v1/steward/ingest/metadata"  # Majordomo's control plane's ingest path


@dataclass
class Upload:
    key: str
    headers: dict[str, str]
    records: list[dict[str, Any]]
    status: int
    raw: bytes = b""  # the body as sent (Content-Encoding undone)
    path: str = ""


@dataclass
class Collector:
    port: int = 0
    uploads: list[Upload] = field(default_factory=list)
    plan: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # next answers
    accepted_keys: set[str] = field(default_factory=set)
    token: str | None = None  # when set, uploads must carry `Authorization: Bearer <token>`
    _server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    @property
    def base_url(self) -> str:
        """Where a Majordomo control plane would be: it serves MAJORDOMO_INGEST below it."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/ingest", self.handle)
        app.router.add_post(MAJORDOMO_INGEST, self.handle)
        self._server = LoopbackServer(app, self.port, "collector")
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()  # aiohttp has already undone Content-Encoding: gzip
        if request.headers.get("Content-Type") == "application/json":
            records = json.loads(raw)["records"]
        else:
            records = [json.loads(line) for line in raw.splitlines()]
        if self.token is not None and request.headers.get("Authorization") != (
                f"Bearer {self.token}"):
            status, headers = 401, {}
        else:
            status, headers = self.plan.pop(0) if self.plan else (200, {})
        key = request.headers.get("Idempotency-Key", "")
        self.uploads.append(Upload(key, dict(request.headers), records, status, raw,
                                   request.path))
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
