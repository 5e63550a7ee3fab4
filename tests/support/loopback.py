"""An aiohttp application served on 127.0.0.1 from a thread of its own, for test peers."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiohttp import web


class LoopbackServer:
    def __init__(self, app: web.Application, port: int = 0, name: str = "loopback"):
        self.app = app
        self.port = port
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name=self.name)
        self._thread.start()
        assert ready.wait(10), f"{self.name} did not start"
        return self.port

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None


class CatchAllFake:
    """For a dataclass fake with `port` and `_server` fields and a `handle` coroutine that
    answers every path: its URL, and starting and stopping its server."""

    name = "fake"
    max_body = 1024**2  # aiohttp's default request body limit
    port: int
    _server: LoopbackServer | None
    handle: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Any:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._server = LoopbackServer(app, self.port, self.name)
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


class QuietHandler(BaseHTTPRequestHandler):
    """A standard-library handler for a small test peer: `send` answers, nothing is logged."""

    def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler],
            server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
            ) -> Iterator[ThreadingHTTPServer]:
    """`handler` served on a free 127.0.0.1 port from a thread, until the block ends."""
    server = server_class(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def installed_format(site: Path, name: str, module: str) -> dict[str, str]:
    """A package declaring the wire format `name` (defined by `module`) through the
    steward.formats entry point, as pip would leave it; the PYTHONPATH that finds it."""
    dist = site / f"steward_{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: steward-{name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[steward.formats]\n{name} = {module}:FORMAT\n")
    repo = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(p for p in (str(site), str(repo), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}
