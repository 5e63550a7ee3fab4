"""Stored provider keys: encryption, tampering, rotation, and injection through the SDKs."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from steward import db
from steward.secrets import master_key, provider_keys
from steward.secrets.crypto import DecryptError, Vault
from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

OPENAI_KEY = "sk-stored-openai-7f3a9c"
ANTHROPIC_KEY = "sk-ant-stored-55e1"
GEMINI_KEY = "AIza-stored-gemini-0b2d"
MESSAGES = [{"role": "user", "content": "hi"}]


def store(home: Path, provider: str, key: str, *extra: str) -> None:
    cli("providers", "set", provider, "--api-key-stdin", *extra, home=home, input=key + "\n")


def connect(home: Path) -> sqlite3.Connection:
    return db.connect(home / "steward.db")


def test_stored_keys_are_sealed_and_bound_to_their_row(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    store(home, "openai", OPENAI_KEY)
    store(home, "anthropic", ANTHROPIC_KEY)
    assert OPENAI_KEY.encode() not in (home / "steward.db").read_bytes()
    listed = json.loads(cli("providers", "list", "--json", home=home).stdout)
    assert [(k["provider"], k["scope"], k["last4"]) for k in listed] == [
        ("anthropic", "default", ANTHROPIC_KEY[-4:]), ("openai", "default", OPENAI_KEY[-4:])]
    conn = connect(home)
    vault, _ = master_key.open_vault(home, conn)
    assert provider_keys.load_all(conn, vault) == {("openai", "*"): OPENAI_KEY,
                                                   ("anthropic", "*"): ANTHROPIC_KEY}
    # A ciphertext moved to another row does not open.
    sealed = conn.execute("SELECT sealed FROM provider_keys WHERE provider='openai'").fetchone()[0]
    conn.execute("UPDATE provider_keys SET sealed = ? WHERE provider = 'anthropic'", (sealed,))
    with pytest.raises(DecryptError, match="provider-key:anthropic"):
        provider_keys.load_all(conn, vault)
    # A modified ciphertext does not open either.
    conn.execute("UPDATE provider_keys SET sealed = ? WHERE provider = 'openai'",
                 (sealed[:-1] + bytes([sealed[-1] ^ 1]),))
    with pytest.raises(DecryptError):
        provider_keys.load_all(conn, Vault(master_key.find(home).key))  # type: ignore[union-attr]


def test_listing_shows_last_four(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    store(home, "openai", OPENAI_KEY)
    listed = json.loads(cli("providers", "list", "--json", home=home).stdout)
    assert listed == [{"provider": "openai", "scope": "default", "last4": OPENAI_KEY[-4:],
                       "created_at": listed[0]["created_at"], "last_used_at": None}]
    cli("providers", "remove", "openai", home=home)
    assert json.loads(cli("providers", "list", "--json", home=home).stdout) == []


def test_wrong_or_missing_master_key_fails_in_one_line(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    store(home, "openai", OPENAI_KEY)
    wrong = cli("secrets", "status", home=home, check=False,
                env={"STEWARD_MASTER_KEY": "ab" * 32})
    assert wrong.returncode == 1 and "does not match" in wrong.stderr
    assert wrong.stderr.count("\n") == 1 and "Traceback" not in wrong.stderr
    (home / "master.key").rename(home / "elsewhere.key")
    missing = cli("run", home=home, check=False)
    assert missing.returncode == 1 and "master key" in missing.stderr
    assert "STEWARD_MASTER_KEY" in missing.stderr and "Traceback" not in missing.stderr
    garbage = cli("secrets", "status", home=home, check=False,
                  env={"STEWARD_MASTER_KEY": "not-a-key"})
    assert garbage.returncode == 1 and "not a 256-bit key" in garbage.stderr


def test_master_key_from_env_and_credential_directory(fresh_home: tuple[Path, str],
                                                      tmp_path: Path) -> None:
    home, _ = fresh_home
    key_hex = (home / "master.key").read_text().strip()
    (home / "master.key").rename(tmp_path / "moved.key")
    as_env = json.loads(cli("secrets", "status", "--json", home=home,
                            env={"STEWARD_MASTER_KEY": key_hex}).stdout)
    assert as_env["store"] == "env" and as_env["decrypts_database"] is True
    as_b64 = cli("secrets", "status", "--json", home=home,
                 env={"STEWARD_MASTER_KEY": base64.b64encode(bytes.fromhex(key_hex)).decode()})
    assert json.loads(as_b64.stdout)["store"] == "env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "steward-master-key").write_bytes(bytes.fromhex(key_hex))
    as_cred = json.loads(cli("secrets", "status", "--json", home=home,
                             env={"CREDENTIALS_DIRECTORY": str(creds)}).stdout)
    assert as_cred["store"] == "credential"


@pytest.mark.parametrize("backend", ["keyring.backends.fail.Keyring",
                                     "keyring.backends.null.Keyring"])
def test_no_keyring_falls_back_to_a_file_with_a_warning(tmp_path: Path, backend: str) -> None:
    result = cli("init", home=tmp_path / "h", env={"PYTHON_KEYRING_BACKEND": backend})
    assert "WARNING" in result.stdout and "master.key" in result.stdout
    assert (tmp_path / "h" / "master.key").stat().st_mode & 0o777 == 0o600


def test_rotation_reencrypts_everything(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    store(home, "openai", OPENAI_KEY)
    store(home, "gemini", GEMINI_KEY, "--for", "default")
    before = (home / "master.key").read_text()
    cli("secrets", "rotate-master", home=home)
    assert (home / "master.key").read_text() != before
    conn = connect(home)
    vault, _ = master_key.open_vault(home, conn)
    assert set(provider_keys.load_all(conn, vault).values()) == {OPENAI_KEY, GEMINI_KEY}


def test_interrupted_rotation_keeps_the_old_key_working(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    store(home, "openai", OPENAI_KEY)
    conn = connect(home)
    old = (home / "master.key").read_text()

    def fail_half_way(conn: sqlite3.Connection, old_vault: Vault, new_vault: Vault) -> int:
        provider_keys.reseal_all(conn, old_vault, new_vault)
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        master_key.rotate(home, conn, fail_half_way)
    assert (home / "master.key").read_text() == old
    vault, _ = master_key.open_vault(home, conn)  # also discards the pending key
    assert provider_keys.load_all(conn, vault) == {("openai", "*"): OPENAI_KEY}
    assert not (home / "master.key.new").exists()


def test_rotation_interrupted_after_commit_is_finished_on_next_open(
        fresh_home: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    home, _ = fresh_home
    store(home, "openai", OPENAI_KEY)
    conn = connect(home)
    old = (home / "master.key").read_text()
    monkeypatch.setattr(master_key, "_promote", lambda *a: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        master_key.rotate(home, conn, provider_keys.reseal_all)
    monkeypatch.undo()
    vault, master = master_key.open_vault(home, conn)
    assert provider_keys.load_all(conn, vault) == {("openai", "*"): OPENAI_KEY}
    assert not (home / "master.key.new").exists()
    assert master.store == "file" and (home / "master.key").read_text() != old


# -- injection end to end -------------------------------------------------------------------


@pytest.fixture
def injecting(fresh_home: tuple[Path, str], upstream: FakeUpstream):
    home, key = fresh_home
    store(home, "openai", OPENAI_KEY)
    store(home, "anthropic", ANTHROPIC_KEY)
    store(home, "gemini", GEMINI_KEY)
    env = {**provider_env(upstream.url),
           "STEWARD_PROVIDERS__ANTHROPIC__ALLOW_CALLER_CREDENTIALS": "false"}
    daemon = Daemon(home, env=env).start()
    yield daemon, key
    daemon.stop()


def test_sdks_with_only_a_gateway_key(injecting: tuple[Daemon, str],
                                      upstream: FakeUpstream) -> None:
    """base_url + the gateway key as api_key: Steward authenticates, strips it, injects."""
    daemon, key = injecting
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key=key, max_retries=0)
    assert oa.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is not None
    assert upstream.last().headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    an = anthropic.Anthropic(base_url=daemon.url, api_key=key, max_retries=0)
    an.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert upstream.last().headers["x-api-key"] == ANTHROPIC_KEY
    assert key not in json.dumps(upstream.last().headers)
    ge = genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=daemon.url))
    ge.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert upstream.last().headers["x-goog-api-key"] == GEMINI_KEY
    assert key not in json.dumps(upstream.last().headers)


def test_caller_credentials_pass_unless_disallowed(injecting: tuple[Daemon, str],
                                                   upstream: FakeUpstream) -> None:
    daemon, key = injecting
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-callers-own", max_retries=0,
                       default_headers={"X-Majordomo-Key": key})
    oa.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert upstream.last().headers["Authorization"] == "Bearer sk-callers-own"
    an = anthropic.Anthropic(base_url=daemon.url, api_key="sk-ant-callers-own", max_retries=0,
                             default_headers={"X-Majordomo-Key": key})
    an.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    seen = upstream.last().headers
    assert seen["x-api-key"] == ANTHROPIC_KEY  # replaced: allow_caller_credentials = false
    assert "sk-ant-callers-own" not in json.dumps(seen)


def test_per_key_provider_key_wins_and_missing_key_is_401(injecting: tuple[Daemon, str],
                                                          upstream: FakeUpstream) -> None:
    daemon, _ = injecting
    added = json.loads(cli("keys", "add", "team-b", "--json", home=daemon.home).stdout)
    store(daemon.home, "openai", "sk-team-b-only", "--for", "team-b")
    cli("providers", "remove", "gemini", home=daemon.home)
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key=added["key"], max_retries=0)
    def uses_team_key() -> bool:
        try:
            oa.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.AuthenticationError:
            return False  # the daemon has not reloaded its keys yet
        return upstream.last().headers["Authorization"] == "Bearer sk-team-b-only"

    wait_for(uses_team_key, 5, "the per-key provider key to be used")
    ge = genai.Client(api_key=added["key"],
                      http_options=genai_types.HttpOptions(base_url=daemon.url))

    def refused() -> Exception | None:
        try:
            ge.models.generate_content(model="gemini-2.5-flash", contents="hi")
        except Exception as exc:
            return exc if getattr(exc, "code", None) == 401 else None
        return None  # the daemon has not seen the removal yet (the 2 s poll)

    caught = wait_for(refused, 5, "the removed gemini key to be missed")
    assert "steward providers set gemini" in str(caught)


def test_no_secret_leaks_anywhere(injecting: tuple[Daemon, str], upstream: FakeUpstream) -> None:
    daemon, key = injecting
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key=key, max_retries=0)
    oa.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    list(oa.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    bad = openai.OpenAI(base_url=daemon.url + "/v1", api_key=key + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    shown = cli("config", "show", home=daemon.home).stdout + cli(
        "providers", "list", home=daemon.home).stdout + cli(
        "secrets", "status", home=daemon.home).stdout
    daemon.stop()
    master = bytes.fromhex((daemon.home / "master.key").read_text().strip())
    secrets = [key.encode(), OPENAI_KEY.encode(), ANTHROPIC_KEY.encode(), GEMINI_KEY.encode(),
               master, master.hex().encode()]
    files = [p for p in daemon.home.rglob("*") if p.is_file() and p.name != "master.key"]
    assert any(p.suffix == ".ndjson" for p in files) and daemon.log_path in files
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret[:8]!r}… found in {path}"
    for secret in secrets:
        assert secret.decode("latin-1") not in shown
