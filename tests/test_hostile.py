"""Hostile callers and broken upstreams, over raw sockets against the running daemon: no request
smuggled past Steward, no break hidden from the caller, no record that reads "no usage reported"
when usage could not be read, and no memory an upstream can make Steward spend without bound."""

from __future__ import annotations

import json
import re
import socket
import uuid
from typing import Any

import httpx
import pytest

from tests.support.daemon import Daemon
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

Gateway = tuple[Daemon, str]
CHAT = "/v1/chat/completions"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


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


def test_still_healthy_and_nothing_crashed(gateway: Gateway) -> None:
    daemon, key = gateway
    got = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"}, timeout=30,
                     headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
    assert got.status_code == 200 and got.json()["usage"]["prompt_tokens"] == 25
    log = daemon.log()[daemon.warm_log_offset:]
    assert "Traceback" not in log and "failed inside Steward" not in log
