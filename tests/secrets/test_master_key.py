"""The master key in a real OS keyring: gnome-keyring's Secret Service on a private D-Bus.

.ci/run installs gnome-keyring and sets STEWARD_REQUIRE_KEYRING_TEST=1, so in CI this test runs
or fails; on a developer machine without gnome-keyring it is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import STEWARD

TOOLS = ("dbus-run-session", "gnome-keyring-daemon")
missing = [tool for tool in TOOLS if shutil.which(tool) is None]
if missing and os.environ.get("STEWARD_REQUIRE_KEYRING_TEST") != "1":
    pytest.skip(f"needs {', '.join(missing)} (Debian: gnome-keyring, dbus)",
                allow_module_level=True)

# An unencrypted, always-unlocked "login" collection set as the default: without it,
# gnome-keyring would ask a graphical prompter to create one, which cannot work headless.
LOGIN_KEYRING = ("[keyring]\ndisplay-name=login\nctime=0\nmtime=0\nlock-on-idle=false\n"
                 "lock-after=false\n")


def in_keyring_session(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    user_home = tmp_path / "user"
    keyrings = user_home / ".local/share/keyrings"
    keyrings.mkdir(parents=True)
    (keyrings / "login.keyring").write_text(LOGIN_KEYRING)
    (keyrings / "default").write_text("login")
    env = {**os.environ, "HOME": str(user_home), "STEWARD": STEWARD, "PYTHON": sys.executable}
    env.pop("PYTHON_KEYRING_BACKEND", None)
    full = ("gnome-keyring-daemon --start --components=secrets >/dev/null 2>&1\n"
            "set -e\n" + script)
    return subprocess.run(["dbus-run-session", "--", "bash", "-c", full], env=env,
                          capture_output=True, text=True, timeout=120)


def test_master_key_lives_in_the_keyring(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = in_keyring_session(tmp_path, f"""
        "$STEWARD" init --home {home} > {tmp_path}/init.txt
        echo sk-in-keyring-9876 | "$STEWARD" providers set openai --home {home}
        "$STEWARD" secrets status --json --home {home} > {tmp_path}/before.json
        "$STEWARD" secrets rotate-master --home {home}
        "$STEWARD" secrets status --json --home {home} > {tmp_path}/after.json
        "$PYTHON" - <<'PY' > {tmp_path}/entry.txt
import keyring
print(keyring.get_password("steward", "{home}") is not None)
print(keyring.get_password("steward", "{home}#pending") is None)
PY
    """)
    assert result.returncode == 0, result.stderr
    assert "stored in the OS keyring (keyring.backends.SecretService.Keyring)" in (
        tmp_path / "init.txt").read_text()
    assert not (home / "master.key").exists()
    for name in ("before.json", "after.json"):
        status = json.loads((tmp_path / name).read_text())
        assert status["store"] == "keyring" and status["decrypts_database"] is True
        assert (status["provider_keys"], status["secrets_opened"]) == (1, 1)
    assert (tmp_path / "entry.txt").read_text().split() == ["True", "True"]
