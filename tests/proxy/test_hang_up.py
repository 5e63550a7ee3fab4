"""A caller that hangs up: the record says whether it had the whole answer first."""

from __future__ import annotations

import httpx

from tests.support.daemon import Daemon

Gateway = tuple[Daemon, str]

MESSAGES = [{"role": "user", "content": "Say hello"}]


def _stream(gateway: Gateway, tag: str, stop_at: str, behavior: str) -> None:
    """Read a chat stream and hang up at the line `stop_at`, before the response's end."""
    daemon, key = gateway
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk", "X-Majordomo-Test": tag,
               "x-fake-behavior": behavior}
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", json=body, headers=headers,
                      timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(stop_at):
                break  # leaving closes the connection: the response's end never came


def test_hanging_up_after_the_last_event_is_not_an_error(gateway: Gateway, tag: str) -> None:
    _stream(gateway, tag, "data: [DONE]", "hold-end")  # every event sent, never the end
    record = gateway[0].record_tagged("test", tag)
    assert (record["status"], record["error"]) == (200, None)
    assert record["input_tokens"] is not None and record["output_tokens"] is not None


def test_hanging_up_mid_stream_is_recorded_as_such(gateway: Gateway, tag: str) -> None:
    _stream(gateway, tag, "data: {", "pace:0.5")  # events half a second apart
    record = gateway[0].record_tagged("test", tag)
    assert (record["status"], record["error"]) == (200, "client disconnected")
