from __future__ import annotations

import compileall
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import steward.cli

from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream

# No test home may reach a real OS keyring: on a desktop one would take every test's master key
# (tests read <home>/master.key), and in CI none answers anyway. Naming the backend also spares
# each `steward` process the suite starts keyring's plugin discovery (~0.1 s of CPU). The
# keyring test (tests/secrets/test_master_key.py) removes this to use its own gnome-keyring.
os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Byte-compile Steward once, as pip does on install: the editable install does not, and
    under PYTHONDONTWRITEBYTECODE (usual in containers) every `steward` process the suite starts
    would otherwise compile each of its modules again."""
    for package in (steward, steward.cli):  # the CLI's package lives in cli/
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Daemon, str]]:
    """One shared daemon for the read-only proxy tests; its first key."""
    home = tmp_path_factory.mktemp("home")
    key = init_home(home)
    env = {**provider_env(upstream.url), "STEWARD_ASYNCIO_DEBUG": "1"}
    daemon = Daemon(home, env=env).start()
    # One request first, so the event-loop watchdog judges steady state, not start-up.
    httpx.post(daemon.url + "/v1/chat/completions", json={"model": "gpt-4o"},
               headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"}, timeout=30)
    daemon.warm_log_offset = daemon.log_path.stat().st_size
    yield daemon, key
    daemon.stop()


@pytest.fixture
def fresh_home(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "home"
    return home, init_home(home)


@pytest.fixture
def tag() -> str:
    """A unique value for X-Majordomo-Test, to find this test's record in the spool."""
    return uuid.uuid4().hex
