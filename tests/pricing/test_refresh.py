"""pricing.refresh_interval: the running gateway fetches the table by itself, as `steward
pricing update` does, and a bad download keeps the table it has."""

from __future__ import annotations

import json
from pathlib import Path

from tests.pricing.test_pricing import Server, price_server  # noqa: F401 - the fixture
from tests.support.daemon import Daemon, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for


def test_the_gateway_refreshes_the_table_and_keeps_it_when_a_download_fails(
        fresh_home: tuple[Path, str], upstream: FakeUpstream, price_server: Server  # noqa: F811
) -> None:
    home, _ = fresh_home
    base = f"http://127.0.0.1:{price_server.server_address[1]}"
    env = {**provider_env(upstream.url), "STEWARD_PRICING__REFRESH_INTERVAL": "0.2s",
           "STEWARD_PRICING__URL": f"{base}/good.json"}
    daemon = Daemon(home, env=env).start()
    try:
        wait_for(lambda: "price table refreshed from" in daemon.log(), 20, "a refresh")
        good = (home / "prices.json").read_bytes()
        assert json.loads(good)["models"]["gpt-4o"]
    finally:
        daemon.stop()
    env["STEWARD_PRICING__URL"] = f"{base}/error.json"
    daemon = Daemon(home, env=env).start()
    try:
        wait_for(lambda: "keeping the current one" in daemon.log(), 20, "a failed refresh")
        assert "answered 500" in daemon.log()
        assert (home / "prices.json").read_bytes() == good
    finally:
        daemon.stop()
