"""A chat stream read in the background through the OpenAI SDK, for tests that signal or
reload the daemon while it runs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import openai

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class BackgroundStream:
    """Chunks as the SDK yields them ("usage" for the closing usage chunk), and any error."""

    thread: threading.Thread | None = None
    chunks: list[str] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def join(self, timeout: float = 30.0) -> None:
        assert self.thread is not None
        self.thread.join(timeout)

    @property
    def complete(self) -> bool:
        return not self.errors and self.chunks[-1:] == ["usage"]


def stream_in_background(base_url: str, key: str, pace: float) -> BackgroundStream:
    """An include_usage chat stream whose upstream events are `pace` seconds apart."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="sk", max_retries=0,
                           default_headers={"X-Majordomo-Key": key,
                                            "x-fake-behavior": f"pace:{pace}"})
    stream = BackgroundStream()

    def read() -> None:
        try:
            for chunk in client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, stream=True,
                    stream_options={"include_usage": True}):
                stream.chunks.append(chunk.choices[0].delta.content if chunk.choices
                                     else "usage")
        except Exception as exc:
            stream.errors.append(exc)

    stream.thread = threading.Thread(target=read)
    stream.thread.start()
    return stream
