"""The CLI says what is true: its version, its refusals, the modes it leaves, its prompts,
and whether the master key really opens this home's secrets."""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import stat
import termios
import time
from importlib.metadata import version
from pathlib import Path

from steward import db
from steward.bodies.bucket import CREDENTIALS
from steward.secrets import master_key
from steward.secrets.provider_keys import get_secret
from tests.support.daemon import STEWARD, cli
from tests.support.waiting import wait_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_version_comes_from_the_package_metadata() -> None:
    result = cli("--version")
    assert result.stdout == f"steward {version('steward')}\n"
    assert result.stderr == ""


def test_usage_by_nonsense_fails_even_without_records(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    assert not list((home / "spool").glob("*.ndjson"))  # nothing to group
    for extra in ((), ("--json",)):
        result = cli("usage", "--by", "nonsense", *extra, home=home, check=False)
        assert result.returncode == 1, result.stdout
        assert result.stdout == ""
        assert result.stderr == ("steward: --by 'nonsense': use one of model, provider, key, "
                                 "tag:NAME\n")
    assert cli("usage", "--by", "tag:team", "--json", home=home).returncode == 0


def test_init_never_changes_the_mode_of_a_directory_it_did_not_create(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    result = cli("init", home=shared)
    assert mode(shared) == 0o1777
    assert f"WARNING: {shared} is readable by other users (mode 1777)" in result.stdout
    for name in ("spool", "bodies"):  # what init creates is still private
        assert mode(shared / name) == 0o700
    again = cli("init", "--quiet-if-exists", home=shared)
    assert "readable by other users" in again.stdout and mode(shared) == 0o1777

    private = tmp_path / "private"
    private.mkdir(mode=0o750)
    os.chmod(private, 0o710)  # others may traverse but not read: no warning, mode kept
    assert "readable by other users" not in cli("init", home=private).stdout
    assert mode(private) == 0o710

    created = tmp_path / "new" / "home"
    assert "readable by other users" not in cli("init", home=created).stdout
    assert mode(created) == 0o700


def run_on_a_terminal(argv: list[str], answer: str, timeout: float = 60) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as its controlling terminal and stdio; type `answer`
    after the prompt appears. Returns the exit status and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.execve(argv[0], argv, {**os.environ, "COLUMNS": "200"})
        finally:
            os._exit(127)
    shown = b""
    typed = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            # click prints the prompt, then getpass turns echo off (discarding anything typed
            # before) and prints a space: type only once the terminal no longer echoes.
            if not typed and shown.endswith(b"secret access key: "):
                wait_for(lambda: not termios.tcgetattr(fd)[3] & termios.ECHO, 10,
                         "echo turned off")
                os.write(fd, answer.encode() + b"\n")
                typed = True
    finally:
        os.close(fd)  # a child still waiting gets SIGHUP
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_bucket_secret_is_asked_with_a_hidden_prompt_on_a_terminal(
        fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-typed-at-a-tty"
    code, shown = run_on_a_terminal(
        [STEWARD, "bucket", "set", "s3://bodies/p", "--region", "us-east-1",
         "--access-key-id", "AKIATTY", "--home", str(home)], secret)
    assert code == 0, shown
    assert "S3 secret access key:" in shown
    assert secret not in shown  # the terminal never echoed it
    assert "Bodies will be stored in s3://bodies/p" in shown
    with db.connect(home / "steward.db") as conn:
        vault, _ = master_key.open_vault(home, conn)
        stored = json.loads(get_secret(conn, vault, CREDENTIALS) or "{}")
    assert stored == {"access_key_id": "AKIATTY", "secret_access_key": secret}


def test_bucket_secret_from_stdin_for_scripts(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    cli("bucket", "set", "s3://bodies", "--access-key-id", "AKIAPIPE", "--secret-stdin",
        home=home, input="piped-secret\n")
    empty = cli("bucket", "set", "s3://other", "--access-key-id", "AKIAPIPE", home=home,
                input="\n", check=False)
    assert empty.returncode == 1 and "no secret access key given" in empty.stderr
    # Refused before anything changed: the destination is still the first one.
    assert "s3://bodies" in cli("bucket", "show", home=home).stdout


def secrets_status(home: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = cli("secrets", "status", "--json", home=home, env=env, check=False)
    return result.returncode, json.loads(result.stdout)


def test_secrets_status_opens_every_sealed_secret(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    cli("providers", "set", "openai", home=home, input="sk-status-check-1234\n")
    cli("upload", "set", "http://127.0.0.1:9/ingest", "--token-stdin", home=home,
        input="upload-token\n")
    code, good = secrets_status(home)
    assert code == 0
    assert good["decrypts_database"] is True and good["reason"] is None
    assert (good["provider_keys"], good["secrets_opened"]) == (1, 2)

    code, wrong = secrets_status(home, {"STEWARD_MASTER_KEY": "ab" * 32})
    assert code == 1
    assert wrong["store"] == "env" and wrong["decrypts_database"] is False
    assert "does not match" in wrong["reason"]

    # The right key, but a row that no longer opens under it (altered, or copied from
    # another home): the check value alone would say yes.
    with sqlite3.connect(home / "steward.db") as conn:
        sealed = conn.execute("SELECT sealed FROM provider_keys").fetchone()[0]
        conn.execute("UPDATE provider_keys SET sealed = ?",
                     (sealed[:-1] + bytes([sealed[-1] ^ 1]),))
    code, altered = secrets_status(home)
    assert code == 1 and altered["decrypts_database"] is False
    assert "provider-key:openai:*" in altered["reason"]
    text = cli("secrets", "status", home=home, check=False)
    assert text.returncode == 1 and "decrypts this home's database: NO" in text.stdout
    assert text.stderr.count("\n") == 1 and "does not decrypt" in text.stderr
    assert "Traceback" not in text.stderr
