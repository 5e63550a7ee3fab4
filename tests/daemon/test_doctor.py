from __future__ import annotations

import json
from pathlib import Path

from tests.support.collector import Collector
from tests.support.daemon import cli, free_port, provider_env
from tests.support.fake_upstream import FakeUpstream


def doctor(home: Path, env: dict[str, str]) -> tuple[int, dict]:
    result = cli("doctor", "--json", home=home, env=env, check=False)
    return result.returncode, json.loads(result.stdout)


def test_doctor_passes_on_a_good_home(fresh_home: tuple[Path, str],
                                      upstream: FakeUpstream) -> None:
    home, _ = fresh_home
    collector = Collector(token="tok").start()
    try:
        cli("upload", "set", collector.url, "--token-stdin", home=home, input="tok\n")
        env = {**provider_env(upstream.url), "STEWARD_SERVER__PORT": str(free_port()),
               "STEWARD_SERVER__ADMIN_PORT": str(free_port())}
        code, report = doctor(home, env)
        table = cli("doctor", home=home, env=env).stdout
    finally:
        collector.stop()
    assert code == 0, report
    names = [c["name"] for c in report["checks"]]
    assert names[:4] == ["config valid", "home writable", "database schema current",
                         "master key available and correct"]
    assert {"bucket write/read/delete", "upload endpoint reachable, token accepted",
            "ports free", "provider openai reachable", "provider together reachable"} <= set(
        names)
    assert all(c["ok"] for c in report["checks"])
    assert "✓ master key available and correct" in table
    # The probe was an empty batch the collector accepted with the token: nothing stored.
    assert [(u.status, u.records, u.key) for u in collector.uploads] == [
        (200, [], "steward-doctor-probe")] * 2
    assert collector.accepted() == []


def upload_check(home: Path, url: str) -> dict:
    dead = f"http://127.0.0.1:{free_port()}"
    cli("upload", "set", url, "--token-stdin", home=home, input="tok\n")
    _, report = doctor(home, {**provider_env(dead), "STEWARD_SERVER__PORT": str(free_port()),
                              "STEWARD_SERVER__ADMIN_PORT": str(free_port())})
    return next(c for c in report["checks"] if c["name"].startswith("upload endpoint"))


def test_doctor_reports_a_refused_token_and_a_wrong_url(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    collector = Collector(token="the-right-token").start()
    try:
        refused = upload_check(home, collector.url)
        wrong_path = upload_check(home, collector.url.replace("/ingest", "/not-ingest"))
    finally:
        collector.stop()
    assert not refused["ok"] and "refused the token (401)" in refused["detail"]
    assert refused["fix"]
    # A 404 is not "token accepted": only what the uploader counts as success passes.
    assert not wrong_path["ok"] and "answered 404" in wrong_path["detail"], wrong_path
    assert collector.accepted() == []


def test_doctor_names_the_failing_checks(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    dead = f"http://127.0.0.1:{free_port()}"
    env = {**provider_env(dead), "STEWARD_MASTER_KEY": "ab" * 32}
    code, report = doctor(home, env)
    assert code == 1
    failed = {c["name"]: c for c in report["checks"] if not c["ok"]}
    assert "master key available and correct" in failed
    assert "does not match" in failed["master key available and correct"]["detail"]
    assert failed["master key available and correct"]["fix"]
    (home / "steward.toml").write_text("[server]\nport = 'x'\n")
    code, report = doctor(home, {})
    assert code == 1 and not report["checks"][0]["ok"]
    assert "server.port" in report["checks"][0]["detail"]
    text = cli("doctor", home=home, check=False)
    assert "✗ config valid" in text.stdout and "fix:" in text.stdout
    assert "Traceback" not in text.stderr
