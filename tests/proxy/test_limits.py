"""Limits and misbehaving peers: each costs at most the one request, in the provider's shape."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: connection attempts hang until they time out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):  # fill the queue; later SYNs are dropped, never answered
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
        for filler in fillers:
            filler.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, blackhole: int):
    """One daemon for the module: each test costs at most its own requests, leaves the daemon
    healthy (it ends by checking that) and finds its record as the latest or by its tag."""
    home = tmp_path_factory.mktemp("limited") / "home"
    key = init_home(home)
    env = {**provider_env(upstream.url), "STEWARD_LIMITS__MAX_HEADERS": "40",
           "STEWARD_PROVIDERS__BLACKHOLE__FORMAT": "openai",
           "STEWARD_PROVIDERS__BLACKHOLE__BASE_URL": f"http://127.0.0.1:{blackhole}/v1",
           "STEWARD_LIMITS__CONNECT_TIMEOUT": "1",
           "STEWARD_LIMITS__MAX_URL_BYTES": "2KiB", "STEWARD_LIMITS__STREAM_IDLE_TIMEOUT": "2",
           "STEWARD_LIMITS__READ_TIMEOUT": "2", "STEWARD_LIMITS__MAX_STREAM_DURATION": "3",
           "STEWARD_LIMITS__MAX_CONCURRENT_PER_PROVIDER": "2",
           "STEWARD_LIMITS__MAX_QUEUED_PER_PROVIDER": "1", "STEWARD_LIMITS__CLIENT_TIMEOUT": "2",
           "STEWARD_LIMITS__MAX_BUFFERED_BODY_BYTES": "4MiB",
           "STEWARD_LIMITS__MAX_BODY_BYTES": "4MiB"}
    daemon = Daemon(home, env=env).start()
    yield daemon, key
    daemon.stop()


def headers(key: str, **extra: str) -> dict[str, str]:
    return {"X-Majordomo-Key": key, "Authorization": "Bearer sk", **extra}


def read_cut_stream(daemon: Daemon, key: str, behavior: str) -> None:
    """A stream Steward has to cut: the caller must see an error, not a clean end."""
    with pytest.raises(httpx.HTTPError), httpx.stream(
            "POST", daemon.url + CHAT, timeout=30, json={"model": "gpt-4o", "stream": True},
            headers=headers(key, **{"x-fake-behavior": behavior})) as response:
        for _ in response.iter_raw():
            pass


def healthy(daemon: Daemon, key: str) -> bool:
    got = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"}, headers=headers(key))
    return got.status_code == 200 and got.json()["usage"]["prompt_tokens"] == 25


def test_url_and_header_limits(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    long_url = httpx.post(daemon.url + CHAT + "?q=" + "x" * 3000, json={}, headers=headers(key))
    assert long_url.status_code == 414 and "limits.max_url_bytes" in long_url.json()[
        "error"]["message"]
    many = httpx.post(daemon.url + "/v1/messages", json={},
                      headers={**headers(key), **{f"x-h{i}": "v" for i in range(50)}})
    assert many.status_code == 431 and many.json()["type"] == "error"
    big = httpx.post(daemon.url + CHAT, json={}, headers={**headers(key), "x-big": "v" * 70000})
    assert big.status_code == 431 and "limits.max_header_bytes" in big.json()["error"]["message"]
    assert healthy(daemon, key)


@pytest.mark.parametrize("path", ["/v1/../admin", "/v1/%2e%2e/chat/completions",
                                  "/v1/chat%2Fcompletions", "/v1/chat/completions%00",
                                  "/v1beta/models/x%5c..:generateContent"])
def test_paths_that_could_steer_are_refused(limited: tuple[Daemon, str],
                                            upstream: FakeUpstream, path: str) -> None:
    daemon, key = limited
    before = len(upstream.requests)
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
        raw.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
                    "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode())
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.1 404"), reply[:200]
    assert len(upstream.requests) == before
    assert healthy(daemon, key)


def test_percent_escapes_are_forwarded_as_sent(limited: tuple[Daemon, str],
                                               upstream: FakeUpstream) -> None:
    daemon, key = limited
    httpx.get(daemon.url + "/v1/models/ft%3Agpt-4o%3Aacme", headers=headers(key))
    assert upstream.last().raw_path == "/v1/models/ft%3Agpt-4o%3Aacme"  # bytes as sent


def test_slow_upstream_headers_are_504(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    got = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"},
                     headers=headers(key, **{"x-fake-behavior": "delay:4"}), timeout=30)
    assert got.status_code == 504
    assert healthy(daemon, key)


def test_idle_stream_is_cut_and_recorded(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    read_cut_stream(daemon, key, "stall")
    record = daemon.records()[-1]
    assert "limits.stream_idle_timeout" in record["error"]
    assert record["response_model"] == "gpt-4o-2024-08-06"  # usage from what was seen
    assert healthy(daemon, key)


def test_overlong_stream_is_cut(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    read_cut_stream(daemon, key, "pace:0.5")  # 8 events: 3.5 s > 3 s
    assert "max_stream_duration" in daemon.records()[-1]["error"]
    assert healthy(daemon, key)


def test_concurrency_cap_queues_then_refuses_with_retry_after(
        limited: tuple[Daemon, str], upstream: FakeUpstream) -> None:
    daemon, key = limited
    results: list[httpx.Response] = []

    def slow() -> None:
        results.append(httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"}, timeout=30,
                                  headers=headers(key, **{"x-fake-behavior": "delay:1.5"})))

    threads = [threading.Thread(target=slow) for _ in range(3)]  # 2 in flight, 1 queued
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(r.headers.get("x-fake-behavior") == "delay:1.5"
                         for r in upstream.requests) >= 2, 10, "two requests upstream")
    refused = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"}, headers=headers(key))
    for thread in threads:
        thread.join(30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "requests in flight" in refused.json()["error"]["message"]
    assert [r.status_code for r in results] == [200, 200, 200]  # the queued one waited


@pytest.mark.parametrize(("behavior", "status", "error"), [
    ("reset-before-headers", 502, "cannot reach openai"),
    ("not-json", 200, "usage_unreadable: the response body does not parse as JSON"),
    ("short-content-length", 200, "upstream failed mid-response"),
])
def test_misbehaving_upstream(limited: tuple[Daemon, str], behavior: str, status: int,
                              error: str | None) -> None:
    daemon, key = limited
    try:
        got = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"},
                         headers=headers(key, **{"x-fake-behavior": behavior}))
        assert got.status_code == status
    except httpx.HTTPError:
        assert behavior == "short-content-length"  # the caller sees a cut, not a clean end
    record = daemon.records()[-1]
    if error is None:
        assert record["error"] is None and record["input_tokens"] is None  # bytes relayed as-is
    else:
        assert error in (record["error"] or json.dumps(record))
    assert healthy(daemon, key)


def test_client_that_stops_sending_is_dropped(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
        raw.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
                    "Authorization: Bearer sk\r\nContent-Length: 100\r\n\r\n{\"mo".encode())
        raw.settimeout(15)
        reply = b""
        while chunk := raw.recv(65536):  # after limits.client_timeout
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"limits.client_timeout" in reply
    assert healthy(daemon, key)


def test_large_body_reaches_the_upstream_exactly(limited: tuple[Daemon, str],
                                                 upstream: FakeUpstream) -> None:
    daemon, key = limited
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user",
                                                         "content": "é" * 1_500_000}]},
                      ensure_ascii=False).encode()  # 3 MB: over the 1 MiB piece size
    got = httpx.post(daemon.url + CHAT, content=body, headers={
        **headers(key), "content-type": "application/json", "x-fake-case": "big"}, timeout=30)
    assert got.status_code == 200
    seen = next(r for r in reversed(upstream.requests) if r.headers.get("x-fake-case") == "big")
    assert seen.body == body  # sent in pieces, byte for byte, with its length
    assert seen.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in seen.headers


def test_bodies_held_at_once_are_capped(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    with socket.create_connection(("127.0.0.1", daemon.port)) as slow:
        # A caller that announced 3 MiB and is still sending: Steward has reserved it.
        slow.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
                     "Authorization: Bearer sk\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {3 * 1024 * 1024}\r\n\r\n{{\"mo".encode())
        wait_for(lambda: metric(daemon, "steward_request_body_bytes_buffered") > 0, 10,
                 "the first body to be reserved")
        refused = httpx.post(daemon.url + CHAT, content=b"x" * (2 * 1024 * 1024),
                             headers=headers(key), timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "limits.max_buffered_body_bytes" in refused.json()["error"]["message"]
        assert healthy(daemon, key)  # small bodies still fit beside it
    wait_for(lambda: metric(daemon, "steward_request_body_bytes_buffered") == 0, 10,
             "the reservation to be released when the caller went away")
    assert healthy(daemon, key)


def metric(daemon: Daemon, name: str) -> float:
    text = httpx.get(daemon.admin_url + "/metrics", timeout=10).text
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")
                      ).split()[1])


def test_client_gone_mid_request_body(limited: tuple[Daemon, str],
                                      upstream: FakeUpstream) -> None:
    daemon, key = limited
    before = len(upstream.requests)
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
        raw.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
                    "Authorization: Bearer sk\r\nX-Majordomo-Case: gone-mid-body\r\n"
                    "Content-Length: 5000\r\n\r\n{\"model\": \"gpt-4o\", ".encode())
        wait_for(lambda: metric(daemon, "steward_request_body_bytes_buffered") > 0, 10,
                 "the request to reach Steward")
    record = wait_for(lambda: [r for r in daemon.records()
                               if r["tags"].get("case") == "gone-mid-body"], 10, "the record")[0]
    assert record["status"] == 499
    assert record["error"] == "client disconnected while sending the request"
    assert len(upstream.requests) == before  # nothing half-sent went upstream
    wait_for(lambda: metric(daemon, "steward_request_body_bytes_buffered") == 0, 10,
             "the body reservation to be released")
    assert healthy(daemon, key)


def test_client_gone_right_after_sending(limited: tuple[Daemon, str],
                                         upstream: FakeUpstream) -> None:
    """The upstream is still thinking: Steward must hang up on it at once, not wait."""
    daemon, key = limited
    upstream.stream_closed.clear()
    body = b'{"model": "gpt-4o"}'
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
        raw.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
                    "Authorization: Bearer sk\r\nX-Majordomo-Case: gone-after-send\r\n"
                    "x-fake-behavior: hold\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: any(r.headers.get("x-fake-behavior") == "hold"
                             for r in upstream.requests[-3:]), 10, "the upstream call")
    assert upstream.stream_closed.wait(5), "Steward kept the upstream call open"
    record = wait_for(lambda: [r for r in daemon.records()
                               if r["tags"].get("case") == "gone-after-send"], 10, "the record")[0]
    assert record["status"] == 499 and record["error"] == "client disconnected"
    assert record["latency_ms"] < 5000
    assert healthy(daemon, key)


def test_upstream_reset_mid_stream(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    read_cut_stream(daemon, key, "reset")
    record = daemon.records()[-1]
    assert record["status"] == 200 and record["stream"] is True
    assert record["error"] == "upstream failed mid-response: ClientPayloadError"
    assert record["response_model"] == "gpt-4o-2024-08-06"  # from the events that did arrive
    assert healthy(daemon, key)


def test_invalid_gzip_is_relayed_as_sent_and_recorded(limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    with socket.create_connection(("127.0.0.1", daemon.port)) as raw:
        raw.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
                    "Authorization: Bearer sk\r\nx-fake-behavior: bad-gzip\r\n"
                    "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode())
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-encoding: gzip" in head.lower()
    assert body == b"this is not gzip"  # exactly what the upstream sent
    record = daemon.records()[-1]
    assert record["error"] == "usage_unreadable: the body could not be decompressed (invalid gzip)"
    assert record["input_tokens"] is None
    assert healthy(daemon, key)


def test_upstream_that_never_accepts_is_504_after_connect_timeout(
        limited: tuple[Daemon, str]) -> None:
    daemon, key = limited
    got = httpx.post(daemon.url + CHAT, json={"model": "gpt-4o"},
                     headers=headers(key, **{"X-Majordomo-Provider": "blackhole"}), timeout=30)
    assert got.status_code == 504
    assert "within 1s (limits.connect_timeout)" in got.json()["error"]["message"]
    assert daemon.records()[-1]["status"] == 504
    assert healthy(daemon, key)
