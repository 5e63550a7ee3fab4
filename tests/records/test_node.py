"""`node` on every record: which instance served it (server.node_name, default the host name),
so a control plane receiving several replicas' uploads can tell them apart."""

from __future__ import annotations

import socket
from pathlib import Path

import openai

from tests.support.daemon import Daemon, provider_env
from tests.support.fake_upstream import FakeUpstream


def _record_from(daemon: Daemon, key: str, tag: str) -> dict[str, object]:
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller", max_retries=0,
                           default_headers={"X-Majordomo-Key": key, "X-Majordomo-Test": tag})
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    return daemon.record_tagged("test", tag)


def test_records_name_the_node(fresh_home: tuple[Path, str], upstream: FakeUpstream,
                               tag: str) -> None:
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        assert _record_from(daemon, key, tag)["node"] == socket.gethostname()
    finally:
        daemon.stop()
    named = Daemon(home, env={**provider_env(upstream.url),
                              "STEWARD_SERVER__NODE_NAME": "steward-1"}).start()
    try:
        assert _record_from(named, key, tag + "-named")["node"] == "steward-1"
    finally:
        named.stop()
