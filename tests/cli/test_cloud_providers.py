"""`steward providers set|list` and `steward doctor` for Vertex AI and Azure OpenAI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import cli
from tests.support.fake_azure import AZURE_KEY, FakeAzure
from tests.support.fake_vertex import FakeGoogleOAuth, service_account_key, write_key


@pytest.fixture(scope="module")
def oauth() -> Iterator[FakeGoogleOAuth]:
    fake = FakeGoogleOAuth().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeAzure]:
    fake = FakeAzure().start()
    yield fake
    fake.stop()


def provider_checks(home: Path, name: str) -> list[dict[str, Any]]:
    result = cli("doctor", "--json", home=home, check=False)
    return [c for c in json.loads(result.stdout)["checks"]
            if c["name"].startswith(f"provider {name} ")]


def provider_check(home: Path, name: str) -> dict[str, Any]:
    (check,) = provider_checks(home, name)
    return check


def one_line_failure(*args: str, home: Path, input: str | None = None) -> str:
    result = cli(*args, home=home, input=input, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    return result.stderr


def test_vertex_key_from_a_file_or_stdin_listed_without_secrets(
        fresh_home: tuple[Path, str], oauth: FakeGoogleOAuth, tmp_path: Path) -> None:
    home, _ = fresh_home
    key = oauth.new_key()
    stored = cli("providers", "set", "vertex", "--from-file",
                 str(write_key(tmp_path / "sa.json", key)), home=home).stdout
    assert f"…{key['private_key_id'][-4:]}" in stored
    listed = json.loads(cli("providers", "list", "--json", home=home).stdout)
    assert [(r["provider"], r["scope"], r["last4"]) for r in listed] == [
        ("vertex", "default", key["private_key_id"][-4:])]
    shown = cli("providers", "list", home=home).stdout + cli("config", "show", home=home).stdout
    assert key["private_key"].splitlines()[1] not in shown and key["client_email"] not in shown
    other = oauth.new_key()
    cli("providers", "set", "vertex", home=home, input=json.dumps(other, indent=2))
    listed = json.loads(cli("providers", "list", "--json", home=home).stdout)
    assert listed[0]["last4"] == other["private_key_id"][-4:]


def test_vertex_refuses_what_is_not_a_service_account_key(fresh_home: tuple[Path, str],
                                                          tmp_path: Path) -> None:
    home, _ = fresh_home
    assert "not JSON" in one_line_failure("providers", "set", "vertex", home=home,
                                          input="ya29.a-token\n")
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"type": "authorized_user", "refresh_token": "r"}))
    assert "service_account" in one_line_failure("providers", "set", "vertex", "--from-file",
                                                 str(user), home=home)
    assert "cannot read" in one_line_failure("providers", "set", "vertex", "--from-file",
                                             str(tmp_path / "missing.json"), home=home)
    assert json.loads(cli("providers", "list", "--json", home=home).stdout) == []


def test_doctor_mints_a_vertex_token(fresh_home: tuple[Path, str], oauth: FakeGoogleOAuth,
                                     tmp_path: Path) -> None:
    home, _ = fresh_home
    assert provider_checks(home, "vertex") == []  # no credentials: it serves nothing
    key = oauth.new_key()
    cli("providers", "set", "vertex", "--from-file", str(write_key(tmp_path / "k.json", key)),
        home=home)
    issued = len(oauth.issued)
    check = provider_check(home, "vertex")
    assert check["name"] == "provider vertex credentials accepted"
    assert check["ok"] and "minted an access token" in check["detail"], check
    assert len(oauth.issued) == issued + 1
    unknown = service_account_key(oauth.token_uri)  # a key Google does not know
    cli("providers", "set", "vertex", "--from-file",
        str(write_key(tmp_path / "u.json", unknown)), home=home)
    check = provider_check(home, "vertex")
    assert not check["ok"] and "invalid_grant" in check["detail"] and check["fix"], check


def test_doctor_checks_the_azure_key(fresh_home: tuple[Path, str], azure: FakeAzure) -> None:
    home, _ = fresh_home
    assert "providers.azure.base_url" in one_line_failure("providers", "set", "azure",
                                                          home=home, input="k\n")
    cli("config", "set", "providers.azure.base_url", azure.url, home=home)
    check = provider_check(home, "azure")
    assert not check["ok"] and "steward providers set azure" in check["detail"]
    cli("providers", "set", "azure", home=home, input="wrong-key\n")
    check = provider_check(home, "azure")
    assert not check["ok"] and "refused the stored key (401)" in check["detail"], check
    cli("providers", "set", "azure", home=home, input=AZURE_KEY + "\n")
    check = provider_check(home, "azure")
    assert check["ok"] and "accepted the stored key" in check["detail"], check
