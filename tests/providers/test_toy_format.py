"""A fourth wire format, defined in this file alone, is routed, authenticated, metered and
redacted like the built-in three: the provider interface is complete.

The daemon finds it the way it would find a format shipped in another package: through a
`steward.formats` entry point (a dist-info written here, put on PYTHONPATH).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from steward import providers
from steward.config import ProviderConfig
from steward.providers.base import Route, StreamReader, WireFormat, loads, scoped
from steward.providers.usage import Reading, Usage
from steward.proxy.credentials import upstream_credential
from steward.proxy.routing import Router
from tests.support.bodies import stored_bytes
from tests.support.daemon import Daemon, cli, init_home
from tests.support.loopback import QuietHandler, installed_format, serving
from tests.support.waiting import wait_for


class _ToyStream:
    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        obj = loads(data)
        if isinstance(obj, dict) and "in" in obj:
            reading.usage = Usage(input_tokens=obj["in"], output_tokens=obj["out"])

    def finish(self, reading: Reading) -> None:
        pass


class ToyFormat(WireFormat):
    """Speaks `POST /toy/v1/say`; its key goes in `X-Toy-Key` or `?toy_key=`."""

    name = "toy"
    credential_headers = (b"x-toy-key",)
    credential_param = "toy_key"
    default_base_url = "http://127.0.0.1:9"
    paths_help = "Toy: /toy/v1/say"
    detection_rank = 5

    def owns(self, path: str) -> bool:
        return path.startswith("/toy/")

    def classify(self, method: str, path: str) -> Route:
        if method == "POST" and path == "/toy/v1/say":
            return Route(endpoint="say", upstream_path=path)
        return scoped("admin", path)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        return ("x-toy-key", api_key)

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"toy_error": {"status": status, "says": message}}).encode()

    def read_json(self, obj: Any, reading: Reading) -> None:
        reading.usage = Usage(input_tokens=obj.get("in"), output_tokens=obj.get("out"))
        reading.response_model = obj.get("voice")

    def stream_reader(self, route: Route) -> StreamReader:
        return _ToyStream()


FORMAT = ToyFormat()


@pytest.fixture
def registered() -> Iterator[None]:
    """The toy format in this process's registry for one test, and gone after it."""
    before = list(providers.FORMATS.values())
    providers.register(FORMAT)
    yield
    providers.FORMATS.clear()
    providers.CREDENTIAL_HEADERS.clear()
    providers.CREDENTIAL_PARAMS.clear()
    for fmt in before:
        providers.register(fmt)


def test_registered_in_process_it_routes_meters_and_owns_its_credentials(registered: None
                                                                          ) -> None:
    assert providers.find("toy") is FORMAT
    assert b"x-toy-key" in providers.CREDENTIAL_HEADERS
    assert "toy_key" in providers.CREDENTIAL_PARAMS
    assert "Toy: /toy/v1/say" in providers.paths_help()

    router = Router({"toy": ProviderConfig("toy", "http://127.0.0.1:9")})
    upstream, route = router.resolve("POST", "/toy/v1/say", None)
    assert (upstream.name, upstream.fmt, route.endpoint) == ("toy", FORMAT, "say")
    assert router.error_format("GET", "/toy/nothing") is FORMAT

    meter = FORMAT.meter(route, 200, "application/json")
    meter.feed(b'{"in": 3, "out"')
    meter.feed(b': 5, "voice": "tin"}')
    reading = meter.finish()
    assert (reading.usage.input_tokens, reading.usage.output_tokens) == (3, 5)

    # The caller's key in the query is replaced by the stored one when callers' own are not
    # allowed: credentials follow the format's declaration, nothing else.
    headers, query = upstream_credential(FORMAT, "toy", False, [("accept", "*/*")],
                                         b"a=1&toy_key=mine", lambda: "stored")
    assert headers == [("accept", "*/*"), ("x-toy-key", "stored")]
    assert query == b"a=1"


class _ToyUpstream(QuietHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _ToyUpstream.seen.append({"path": self.path, "headers": dict(self.headers),
                                  "body": body})
        presented = self.headers.get("x-toy-key") or self.path.partition("toy_key=")[2][:14]
        if presented not in ("sk-toy-stored", "sk-toy-callers"):
            self.send(401, b'{"toy_error": {"says": "bad toy key"}}')
            return
        if json.loads(body).get("stream"):
            events = b'data: {"word": "hel"}\n\ndata: {"word": "lo", "in": 4, "out": 2}\n\n'
            self.send(200, events, "text/event-stream")
            return
        self.send(200, b'{"said": "hello", "in": 3, "out": 5, "voice": "tin-2"}')



@pytest.fixture
def toy_upstream() -> Iterator[str]:
    _ToyUpstream.seen = []
    with serving(_ToyUpstream) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def plugin_env(tmp_path: Path, upstream: str) -> dict[str, str]:
    """An installed package that declares the toy format, as pip would leave it."""
    return {**installed_format(tmp_path / "site", "toy", "tests.providers.test_toy_format"),
            "STEWARD_PROVIDERS__TOY__FORMAT": "toy",
            "STEWARD_PROVIDERS__TOY__BASE_URL": upstream}


def test_the_daemon_serves_a_plugin_format_end_to_end(tmp_path: Path, toy_upstream: str) -> None:
    home = tmp_path / "home"
    key = init_home(home)
    env = plugin_env(tmp_path, toy_upstream)
    cli("providers", "set", "toy", "--api-key-stdin", home=home, input="sk-toy-stored\n", env=env)
    daemon = Daemon(home, env=env).start()
    try:
        with httpx.Client(base_url=daemon.url, timeout=10) as client:
            # Path detection, the stored key injected in the format's header, usage metered.
            ok = client.post("/toy/v1/say", json={"text": "hello"},
                             headers={"X-Majordomo-Key": key})
            assert ok.status_code == 200 and ok.json()["said"] == "hello"
            stored_call = _ToyUpstream.seen[-1]
            assert stored_call["headers"]["x-toy-key"] == "sk-toy-stored"
            assert "X-Majordomo-Key" not in stored_call["headers"]

            # The caller's own key, in the format's query parameter, is kept upstream and
            # redacted from the stored body; the stream is metered from its events.
            streamed = client.post("/toy/v1/say?toy_key=sk-toy-callers&x=1",
                                   json={"text": "hi", "stream": True},
                                   headers={"X-Majordomo-Key": key})
            assert streamed.status_code == 200
            assert streamed.content.endswith(b'"in": 4, "out": 2}\n\n')
            assert "toy_key=sk-toy-callers" in _ToyUpstream.seen[-1]["path"]

            # The gateway key in the format's own credential header authenticates, and goes
            # no further.
            via_header = client.post("/toy/v1/say", json={"text": "x"},
                                     headers={"X-Toy-Key": key})
            assert via_header.status_code == 200
            assert _ToyUpstream.seen[-1]["headers"]["x-toy-key"] == "sk-toy-stored"

            # Steward's own errors come in the format's error shape.
            refused = client.post("/toy/v1/say", json={}, headers={"X-Majordomo-Key": "nope"})
            assert refused.status_code == 401
            assert "Invalid X-Majordomo-Key" in refused.json()["toy_error"]["says"]
            unknown = client.get("/nowhere", headers={"X-Majordomo-Key": key})
            assert unknown.status_code == 404 and "Toy: /toy/v1/say" in unknown.text

        records = {r["id"]: r for r in daemon.records()}
        first = records[ok.headers["x-majordomo-request-id"]]
        assert (first["provider"], first["format"], first["endpoint"]) == ("toy", "toy", "say")
        assert (first["input_tokens"], first["output_tokens"]) == (3, 5)
        assert first["response_model"] == "tin-2"
        second = records[streamed.headers["x-majordomo-request-id"]]
        assert second["stream"] is True and second["ttft_ms"] is not None
        assert (second["input_tokens"], second["output_tokens"]) == (4, 2)

        stored = wait_for(lambda: stored_bytes(second["body_ref"]), 10,
                          "the streamed request's body stored")
        document = gzip.decompress(stored).decode()
        assert "sk-toy-callers" not in document
        assert "toy_key=%5BREDACTED%5D" in document
    finally:
        daemon.stop()
