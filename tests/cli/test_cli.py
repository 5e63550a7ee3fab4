"""The steward command as an operator runs it: one-line errors, non-zero exits, no tracebacks."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

from tests.support.daemon import cli, init_home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_private_home_and_prints_a_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = cli("init", home=home)
    assert str(home) in result.stdout
    key = next(line for line in result.stdout.splitlines() if line.startswith("mdm_sk_"))
    assert len(key) >= len("mdm_sk_") + 32
    assert mode(home) == 0o700
    for name in ("spool", "bodies"):
        assert mode(home / name) == 0o700
    for name in ("steward.toml", "steward.db"):
        assert mode(home / name) == 0o600
    # Only a hash is stored: the key's bytes appear nowhere in the database.
    assert key.encode() not in (home / "steward.db").read_bytes()
    with sqlite3.connect(home / "steward.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1


def test_init_is_idempotent_and_force_keeps_a_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    cli("config", "set", "server.port", "7777", home=home)
    again = cli("init", home=home)
    assert "exists   steward.toml (kept)" in again.stdout
    assert "mdm_sk_" not in again.stdout
    assert "port = 7777" in (home / "steward.toml").read_text()
    cli("init", "--force", home=home)
    assert "port = 7777" not in (home / "steward.toml").read_text()
    assert "port = 7777" in (home / "steward.toml.bak").read_text()
    assert len(json.loads(cli("keys", "list", "--json", home=home).stdout)) == 1


def test_home_from_environment(tmp_path: Path) -> None:
    home = tmp_path / "from-env"
    cli("init", env={"STEWARD_HOME": str(home)})
    assert (home / "steward.toml").exists()
    state = tmp_path / "state"
    cli("init", env={"STATE_DIRECTORY": str(state), "STEWARD_HOME": ""})
    assert (state / "steward.toml").exists()


def test_config_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    bad = cli("config", "set", "server.port", "not-a-port", home=home, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "server.port" in bad.stderr and "steward.toml" in bad.stderr
    assert "Traceback" not in bad.stderr
    (home / "steward.toml").write_text("[server]\nport = 'x'\n")
    shown = cli("config", "show", home=home, check=False)
    assert shown.returncode == 2 and "server.port" in shown.stderr
    assert "Traceback" not in shown.stderr


def test_commands_on_a_missing_home_say_to_init(tmp_path: Path) -> None:
    result = cli("keys", "list", home=tmp_path / "nowhere", check=False)
    assert result.returncode == 1
    assert "steward init" in result.stderr and "Traceback" not in result.stderr


def test_config_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    shown = json.loads(cli("config", "show", "--json", home=home,
                           env={"STEWARD_SERVER__PORT": "7999"}).stdout)
    assert shown["server"]["port"] == 7999
    assert "port = 7680" in cli("config", "show", home=home).stdout


def test_keys_lifecycle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    added = json.loads(cli("keys", "add", "svc-a", "--tag", "team=ml", "--tag", "env=prod",
                           "--expires-in", "30d", "--json", home=home).stdout)
    assert added["key"].startswith("mdm_sk_") and added["prefix"] == added["key"][:12]
    assert added["tags"] == {"team": "ml", "env": "prod"}
    assert 29 * 86400 < added["expires_at"] - added["created_at"] <= 30 * 86400
    table = cli("keys", "list", home=home).stdout
    assert "svc-a" in table and "active" in table and added["key"] not in table
    dup = cli("keys", "add", "svc-a", home=home, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    cli("keys", "revoke", added["id"], home=home)
    listed = {k["name"]: k for k in json.loads(cli("keys", "list", "--json", home=home).stdout)}
    assert listed["svc-a"]["status"] == "revoked"
    assert "key" not in listed["svc-a"]
    missing = cli("keys", "revoke", "nope", home=home, check=False)
    assert missing.returncode == 1 and "no gateway key" in missing.stderr
    bad_tag = cli("keys", "add", "x", "--tag", "novalue", home=home, check=False)
    assert bad_tag.returncode == 1 and "NAME=VALUE" in bad_tag.stderr


def test_run_fails_fast_on_a_port_in_use(tmp_path: Path) -> None:
    import socket

    home = tmp_path / "home"
    init_home(home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("run", "--port", str(port), home=home, check=False)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
