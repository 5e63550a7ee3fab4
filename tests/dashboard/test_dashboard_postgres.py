"""Admin tokens in a shared PostgreSQL (database.url): the dashboard honours a token made and
revoked there within seconds; its store stays a local file."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import Postgres, require_postgres
from tests.support.waiting import wait_for


def test_admin_tokens_live_in_postgres(tmp_path: Path, upstream: FakeUpstream) -> None:
    pg = Postgres(require_postgres()).init()
    try:
        name = "t" + uuid.uuid4().hex[:12]
        pg.psql(f"CREATE DATABASE {name}", dbname="postgres")
        env = {"STEWARD_DATABASE__URL": pg.url(name), "STEWARD_MASTER_KEY": "b2" * 32}
        home = tmp_path / "home"
        cli("init", home=home, env=env)
        daemon = Daemon(home, env={**env, **provider_env(upstream.url),
                                   "STEWARD_DASHBOARD__REQUIRE_TOKEN": "1"}).start()
        try:
            made = cli("admin", "token", "create", "ops", home=home, env=env)
            token = made.stdout.strip().splitlines()[-1]
            assert pg.psql("SELECT name FROM admin_tokens", dbname=name) == "ops"
            bearer = {"Authorization": f"Bearer {token}"}
            url = daemon.admin_url + "/api/filters"
            assert httpx.get(url).status_code == 401
            wait_for(lambda: httpx.get(url, headers=bearer).status_code == 200,
                     what="the token accepted")
            cli("admin", "token", "revoke", "ops", home=home, env=env)
            wait_for(lambda: httpx.get(url, headers=bearer).status_code == 401,
                     what="the revoked token refused")
            assert (home / "dashboard.db").exists()  # local, whatever database.url says
        finally:
            daemon.stop()
    finally:
        pg.destroy()
