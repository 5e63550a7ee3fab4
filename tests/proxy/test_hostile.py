"""Hostile callers and broken upstreams, over raw sockets against the running daemon: no request
smuggled past Steward, no break hidden from the caller, no record that reads "no usage reported"
when usage could not be read, and no memory an upstream can make Steward spend without bound."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import pytest

from steward.bodies import writer as bodies
from steward.bodies.writer import SPILL_AT, Capture, build_document
from steward.providers import FORMATS, Route
from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream, gzip_bomb
from tests.support.waiting import wait_for

Gateway = tuple[Daemon, str]
CHAT = "/v1/chat/completions"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A daemon of this module's own: inflating a bomb's first 64 MiB holds the event loop
    longer than the shared daemon's slow-callback watch allows."""
    home = tmp_path_factory.mktemp("hostile")
    key = init_home(home)
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    daemon.warm_log_offset = daemon.log_path.stat().st_size
    yield daemon, key
    daemon.stop()


def converse(daemon: Daemon, request: bytes, timeout: float = 20) -> bytes:
    """Send raw bytes and read until the daemon closes the connection. A daemon that keeps it
    open (and so would read what follows as another request) fails on the timeout."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=timeout) as raw:
        raw.sendall(request)
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    return reply


def split_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(key: str, *lines: str, body: bytes = b'{"model": "gpt-4o"}',
            path: str = CHAT, close: bool = True) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: steward", f"X-Majordomo-Key: {key}",
            "Authorization: Bearer sk-caller", "Content-Type: application/json", *lines]
    if close:
        head.append("Connection: close")
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


def record(daemon: Daemon, request_id: str) -> dict[str, Any]:
    return wait_for(lambda: next((r for r in daemon.records() if r["id"] == request_id), None),
                    10, f"the record of {request_id}")


def unreadable_count(daemon: Daemon) -> float:
    text = httpx.get(daemon.admin_url + "/metrics", timeout=10).text
    match = re.search(r'^steward_usage_unreadable_total\{provider="openai"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


# -- request smuggling ----------------------------------------------------------------------

def smuggling(key: str, mark: str, framing: list[str]) -> bytes:
    """A request whose chunked body ends at once, followed by a second, authenticated request:
    a server that reads the first as chunked and keeps the connection would run the second."""
    smuggled = request(key, "Content-Length: 2", f"X-Fake-Case: {mark}", body=b"{}",
                       path="/v1/embeddings", close=False)
    body = b"0\r\n\r\n" + smuggled
    lines = [line.replace("{n}", str(len(body))) for line in framing]
    return request(key, f"X-Fake-Case: {mark}", *lines, body=body, close=False)


# (case, framing header lines, status, answered by Steward in the provider's shape)
SMUGGLING = [
    ("CL.TE", ["Content-Length: {n}", "Transfer-Encoding: chunked"], 400, True),
    ("TE.CL", ["Transfer-Encoding: chunked", "Content-Length: {n}"], 400, True),
    ("TE after a tab", ["Content-Length: {n}", "transfer-encoding:\tchunked"], 400, True),
    ("TE in capitals", ["Content-Length: {n}", "TRANSFER-ENCODING: CHUNKED"], 400, True),
    # h11 (under Hypercorn) refuses these itself before Steward sees them: a bare answer with
    # Connection: close, no body and no record, as for any request that does not parse.
    ("TE list", ["Content-Length: {n}", "Transfer-Encoding: chunked, identity"], 501, False),
    ("duplicate TE", ["Transfer-Encoding: chunked", "Content-Length: {n}",
                      "Transfer-Encoding: chunked"], 501, False),
    ("space before colon", ["Content-Length: {n}", "Transfer-Encoding : chunked"], 400, False),
]


@pytest.mark.parametrize(("case", "framing", "status", "steward"), SMUGGLING,
                         ids=[c[0] for c in SMUGGLING])
def test_smuggled_requests_are_refused_and_the_connection_closed(
        gateway: Gateway, upstream: FakeUpstream, case: str, framing: list[str], status: int,
        steward: bool) -> None:
    daemon, key = gateway
    mark = f"smuggle-{uuid.uuid4().hex}"
    reply = converse(daemon, smuggling(key, mark, framing))
    assert [int(s) for s in STATUS_LINE.findall(reply)] == [status]  # one answer, then closed
    _, headers, body = split_reply(reply)
    assert headers["connection"] == "close"
    assert not [r for r in upstream.requests if r.headers.get("x-fake-case") == mark]
    if steward:
        message = json.loads(body)["error"]["message"]
        assert "Transfer-Encoding" in message and "Content-Length" in message
        rec = record(daemon, headers["x-majordomo-request-id"])
        assert rec["status"] == 400 and rec["error"] == message
    else:
        assert body == b""


def test_a_chunked_request_alone_is_still_served(gateway: Gateway) -> None:
    daemon, key = gateway
    body = b'{"model": "gpt-4o"}'
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    got, _, reply = split_reply(converse(daemon, request(key, "Transfer-Encoding: chunked",
                                                         body=chunked)))
    assert got == 200 and b"prompt_tokens" in reply


# -- silent truncation ----------------------------------------------------------------------

def test_reset_after_a_body_without_length_reaches_the_caller_as_a_break(
        gateway: Gateway) -> None:
    daemon, key = gateway
    reply = converse(daemon, request(key, "Content-Length: 19", "x-fake-behavior: reset-unframed"))
    got, headers, body = split_reply(reply)
    assert got == 200 and headers.get("transfer-encoding") == "chunked"
    assert not body.endswith(b"0\r\n\r\n")  # no final chunk: the caller sees the break
    rec = record(daemon, headers["x-majordomo-request-id"])
    assert rec["error"] == "upstream failed mid-response: ConnectionResetError"


def test_a_body_without_length_ended_by_a_clean_close_is_complete(gateway: Gateway) -> None:
    daemon, key = gateway
    got, headers, body = split_reply(converse(daemon, request(
        key, "Content-Length: 19", "x-fake-behavior: unframed")))
    assert got == 200 and body.endswith(b"0\r\n\r\n")
    rec = record(daemon, headers["x-majordomo-request-id"])
    assert rec["error"] is None and rec["input_tokens"] == 25


# -- unreadable usage -----------------------------------------------------------------------

# (behavior, stream, what the caller gets, the record's error)
UNREADABLE = [
    ("not-json", False, b"<html>upstream proxy error</html>",
     "usage_unreadable: the response body does not parse as JSON"),
    ("bad-gzip", False, b"this is not gzip",
     "usage_unreadable: the body could not be decompressed (invalid gzip)"),
    ("sse-not-json", True, b"data: <html>bad gateway</html>\n\ndata: upstream timed out\n\n",
     "usage_unreadable: 2 of 2 stream events are not JSON"),
]


@pytest.mark.parametrize(("behavior", "stream", "relayed", "error"), UNREADABLE,
                         ids=[c[0] for c in UNREADABLE])
def test_unreadable_usage_is_recorded_and_counted(gateway: Gateway, behavior: str,
                                                  stream: bool, relayed: bytes,
                                                  error: str) -> None:
    daemon, key = gateway
    before = unreadable_count(daemon)
    body = json.dumps({"model": "gpt-4o", "stream": stream}).encode()
    with httpx.stream("POST", daemon.url + CHAT, content=body, timeout=30, headers={
            "X-Majordomo-Key": key, "Authorization": "Bearer sk", "x-fake-behavior": behavior,
            "Accept-Encoding": "gzip"}) as got:
        raw = b"".join(got.iter_raw())
    assert got.status_code == 200 and raw == relayed  # the caller's answer unchanged
    rec = record(daemon, got.headers["x-majordomo-request-id"])
    assert rec["error"] == error and rec["input_tokens"] is None
    assert unreadable_count(daemon) == before + 1


@pytest.mark.parametrize(("content_type", "flagged"), [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/problem+json", True), ("", True), ("audio/mpeg", False),
    ("application/jsonl", False), ("text/plain", False)])
def test_only_a_body_that_says_it_is_json_is_flagged_unreadable(content_type: str,
                                                                flagged: bool) -> None:
    meter = FORMATS["openai"].meter(Route("chat/completions", "/c"), 200, content_type)
    meter.feed(b"\xff\xfb\x90 not json")
    error = meter.finish().error
    assert error == ("usage_unreadable: the response body does not parse as JSON" if flagged
                     else None)


# -- decompression bombs --------------------------------------------------------------------

def stored_body(daemon: Daemon, rec: dict[str, Any]) -> dict[str, Any]:
    path = Path(unquote(urlparse(rec["body_ref"]).path))
    wait_for(path.exists, 30, "the body document")
    return json.loads(gzip.decompress(path.read_bytes()))


def test_a_decompression_bomb_is_relayed_as_sent_and_not_inflated(gateway: Gateway) -> None:
    daemon, key = gateway
    with httpx.stream("POST", daemon.url + CHAT, json={"model": "gpt-4o"}, timeout=60, headers={
            "X-Majordomo-Key": key, "Authorization": "Bearer sk", "x-fake-behavior": "bomb:256",
            "Accept-Encoding": "gzip"}) as got:
        raw = b"".join(got.iter_raw())  # the compressed bytes, as the upstream sent them
    assert got.status_code == 200 and raw == gzip_bomb(256)
    rec = record(daemon, got.headers["x-majordomo-request-id"])
    assert rec["error"] == "usage_unreadable: decompressed size over 64 MiB (the metered size)"
    assert rec["input_tokens"] is None
    doc = stored_body(daemon, rec)["response"]
    assert doc["body_encoding"] == "base64"  # stored as it came, compressed
    assert base64.b64decode(doc["body"]) == raw
    assert ["content-encoding", "gzip"] in doc["headers"]


# -- endless stream lines -------------------------------------------------------------------

def test_an_endless_stream_line_is_relayed_and_skipped_for_accounting(gateway: Gateway) -> None:
    daemon, key = gateway
    with httpx.stream("POST", daemon.url + CHAT, timeout=60, headers={
            "X-Majordomo-Key": key, "Authorization": "Bearer sk",
            "x-fake-behavior": "endless-line:32"},
            json={"model": "gpt-4o", "stream": True}) as got:
        size = sum(len(chunk) for chunk in got.iter_raw())
    assert got.status_code == 200 and size > 32 * 1024 * 1024  # relayed whole
    rec = record(daemon, got.headers["x-majordomo-request-id"])
    assert rec["input_tokens"] == 25  # usage still read from the events after the long line
    assert rec["error"] == ("a stream line over 16777216 bytes was skipped for accounting "
                            "(limits.max_sse_line_bytes)")


# -- huge captured responses ---------------------------------------------------------------

def captured(pieces: list[bytes], content_type: bytes, encoding: bytes = b"") -> dict[str, Any]:
    """The response part of the document of a capture fed these chunks as the proxy feeds it."""
    async def run() -> bytes:
        capture = Capture("k", {"id": "x", "stream": True}, [], b"{}", b"")
        capture.response_headers = [(b"content-type", content_type)]
        if encoding:
            capture.response_headers.append((b"content-encoding", encoding))
        for piece in pieces:
            capture.add(piece)
        assert capture.spill is not None
        await capture.spill.settle()
        try:
            return await asyncio.to_thread(build_document, capture)
        finally:
            capture.release()
    return json.loads(gzip.decompress(asyncio.run(run())))["response"]


def test_a_spilled_stream_is_stored_as_the_text_the_caller_got() -> None:
    text = "data: {\"content\": \"caf\u00e9 \U0001f600 \\\"q\\\"\"}\n\n" * 300_000
    raw = text.encode()  # > SPILL_AT, cut below mid-character
    doc = captured([raw[i:i + 65_537] for i in range(0, len(raw), 65_537)],
                   b"text/event-stream")
    assert doc["body_encoding"] == "sse" and doc["body"] == text


def test_a_spilled_body_that_is_not_text_is_stored_as_it_came() -> None:
    raw = bytes(range(256)) * (SPILL_AT // 128)
    doc = captured([raw[i:i + 50_000] for i in range(0, len(raw), 50_000)],
                   b"application/octet-stream")
    assert doc["body_encoding"] == "base64" and base64.b64decode(doc["body"]) == raw
    packed = gzip.compress(random.Random(3).randbytes(SPILL_AT + 1000))  # spills; not inflated
    doc = captured([packed[i:i + 65_536] for i in range(0, len(packed), 65_536)],
                   b"application/json", b"gzip")
    assert doc["body_encoding"] == "base64" and base64.b64decode(doc["body"]) == packed


def test_a_disk_that_refuses_the_spill_keeps_the_body_in_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bodies.tempfile, "TemporaryFile", refuse)
    text = "data: x\n\n" * (SPILL_AT // 4)
    raw = text.encode()
    doc = captured([raw[i:i + 65_536] for i in range(0, len(raw), 65_536)],
                   b"text/event-stream")
    assert doc["body"] == text


# -- tag values -----------------------------------------------------------------------------

def test_a_tag_value_that_is_not_utf8_is_refused(gateway: Gateway, upstream: FakeUpstream
                                                 ) -> None:
    daemon, key = gateway
    mark = uuid.uuid4().hex
    reply = converse(daemon, request(key, "Content-Length: 19", f"X-Fake-Case: {mark}",
                                     "X-Majordomo-Team: caf\xe9"))
    got, headers, body = split_reply(reply)
    assert got == 400
    message = json.loads(body)["error"]["message"]
    assert "X-Majordomo-Team" in message and "UTF-8" in message
    assert not [r for r in upstream.requests if r.headers.get("x-fake-case") == mark]
    assert record(daemon, headers["x-majordomo-request-id"])["status"] == 400


def test_still_healthy_and_nothing_crashed(gateway: Gateway) -> None:
    daemon, key = gateway
    got = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"}, timeout=30,
                     headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
    assert got.status_code == 200 and got.json()["usage"]["prompt_tokens"] == 25
    log = daemon.log()[daemon.warm_log_offset:]
    assert "Traceback" not in log and "failed inside Steward" not in log
