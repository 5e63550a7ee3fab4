"""Bad input never gives a 500 or a traceback: Steward forwards the bytes unchanged (the provider
judges them, as it would directly) or refuses with a clear 4xx, records the request either way,
and stays healthy."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

Gateway = tuple[Daemon, str]
CHAT = "/v1/chat/completions"


def exchange(daemon: Daemon, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange, so the test controls every byte (duplicates included)."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as raw:
        raw.sendall(request)
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post(key: str, body: bytes, *extra: str, path: str = CHAT,
         content_type: str = "application/json") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: steward", f"X-Majordomo-Key: {key}",
             "Authorization: Bearer sk-caller", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close", *extra]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def record(daemon: Daemon, request_id: str) -> dict[str, Any]:
    return wait_for(lambda: next((r for r in daemon.records() if r["id"] == request_id), None),
                    10, f"the record of {request_id}")


# (case, request body, extra header lines, content type, who answers, model recorded)
FORWARDED = [
    ("malformed JSON", b'{"model": "gpt-4o", "messages": [', (), "application/json", 400,
     "gpt-4o"),
    ("wrong content type", b'{"model": "gpt-4o"}', (), "text/plain", 200, "gpt-4o"),
    ("invalid UTF-8", b'{"model": "gpt-4o", "messages": "\xff\xfe\xc3("}', (),
     "application/json", 400, "gpt-4o"),
    ("model is a number", b'{"model": 123}', (), "application/json", 400, None),
    ("model is an object", b'{"model": {"name": "gpt-4o"}}', (), "application/json", 400, None),
    ("model escapes", b'{"model": "gpt-\\"4o\\u0000"}', (), "application/json", 200,
     'gpt-\\"4o\\u0000'),
    ("nested too deep", b"[" * 200_000, (), "application/json", 400, None),
    ("empty body", b"", (), "application/json", 200, None),
    ("duplicate ordinary headers", b'{"model": "gpt-4o"}', ("X-Dup: one", "X-Dup: two"),
     "application/json", 200, "gpt-4o"),
    ("UTF-8 header value", b'{"model": "gpt-4o"}', ("X-Note: caf\xc3\xa9 \xe2\x9c\x93",),
     "application/json", 200, "gpt-4o"),
]


@pytest.mark.parametrize(("case", "body", "extra", "content_type", "status", "model"), FORWARDED,
                         ids=[c[0] for c in FORWARDED])
def test_odd_requests_are_forwarded_unchanged_and_recorded(
        gateway: Gateway, upstream: FakeUpstream, case: str, body: bytes,
        extra: tuple[str, ...], content_type: str, status: int, model: str | None) -> None:
    daemon, key = gateway
    got, headers, reply = exchange(daemon, post(key, body, f"X-Fake-Case: {case}", *extra,
                                                content_type=content_type))
    assert got == status  # the fake provider's verdict, relayed
    seen = next(r for r in reversed(upstream.requests) if r.headers.get("x-fake-case") == case)
    assert seen.body == body
    sent = [(n, v) for n, v in seen.raw_headers if n.lower().startswith(b"x-")]
    for line in extra:  # duplicates both arrive, in order, byte for byte
        name, _, value = line.encode("latin-1").partition(b": ")
        assert (name.lower(), value) in sent
    assert [v for n, v in sent if n == b"x-dup"] == ([b"one", b"two"] if "X-Dup: one" in extra
                                                      else [])
    rec = record(daemon, headers["x-majordomo-request-id"])
    assert rec["status"] == status and rec["model"] == model
    assert (rec["error"] is None) == (status == 200)
    assert json.loads(reply)  # a JSON answer either way


REFUSED = [
    ("two gateway keys", CHAT, ("X-Majordomo-Key: mdm_sk_other",), 400, "more than once"),
    ("two providers", CHAT, ("X-Majordomo-Provider: openai", "X-Majordomo-Provider: gemini"),
     400, "more than once"),
    ("dot-dot", "/v1/../v1/chat/completions", (), 400, "'..'"),
    ("encoded dot-dot", "/v1/%2e%2e/chat/completions", (), 400, "'..'"),
    ("encoded slash", "/v1/chat%2Fcompletions", (), 400, "encoded"),
    ("NUL", "/v1/chat/completions%00", (), 400, "control character"),
    ("header bytes not UTF-8", CHAT, ("X-Note: caf\xe9",), 400, "not UTF-8"),
    ("oversized header", CHAT, ("X-Big: " + "v" * 70_000,), 431, "limits.max_header_bytes"),
    ("unknown path", "/v2/everything", (), 404, "does not know the path"),
]


@pytest.mark.parametrize(("case", "path", "extra", "status", "message"), REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_refusals_are_clear_4xx_and_recorded(gateway: Gateway, upstream: FakeUpstream,
                                             case: str, path: str, extra: tuple[str, ...],
                                             status: int, message: str) -> None:
    daemon, key = gateway
    before = len(upstream.requests)
    got, headers, reply = exchange(daemon, post(key, b'{"model": "gpt-4o"}', *extra, path=path))
    assert got == status
    error = json.loads(reply)["error"]["message"]
    assert message in error
    assert len(upstream.requests) == before  # nothing went upstream
    rec = record(daemon, headers["x-majordomo-request-id"])
    assert rec["status"] == status and rec["error"] == error


def test_still_healthy_and_nothing_crashed(gateway: Gateway) -> None:
    daemon, key = gateway
    status, _, reply = exchange(daemon, post(key, b'{"model": "gpt-4o"}'))
    assert status == 200 and json.loads(reply)["usage"]["prompt_tokens"] == 25
    log = daemon.log()[daemon.warm_log_offset:]
    assert "Traceback" not in log and "failed inside Steward" not in log
