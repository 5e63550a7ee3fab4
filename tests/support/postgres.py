"""A real PostgreSQL server (Debian's `postgresql` package) for tests, on a free loopback port.

PostgreSQL refuses to run as root, so initdb and pg_ctl run as the `postgres` user the package
creates, on a temporary data directory that user owns. Password (scram) auth on 127.0.0.1, so
Steward connects with a URL as an operator writes it. Absent binaries skip the tests with the
reason, unless STEWARD_REQUIRE_POSTGRES_TEST=1 (CI, where .ci/run installs the package).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.daemon import free_port

USER, PASSWORD = "steward", "s3cret-Pa55word"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The binaries' directory, or a skip (a failure in CI) saying what is missing."""
    bin_dir = _bin_dir()
    why = None
    if bin_dir is None:
        why = "PostgreSQL is not installed (apt-get install postgresql)"
    elif not shutil.which("runuser"):
        why = "runuser is missing"
    else:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            why = "there is no postgres user to run the server as"
    if why is not None:
        if os.environ.get("STEWARD_REQUIRE_POSTGRES_TEST") == "1":
            pytest.fail(f"STEWARD_REQUIRE_POSTGRES_TEST=1 but {why}")
        pytest.skip(why)
    assert bin_dir is not None
    return bin_dir


@dataclass
class Postgres:
    bin_dir: Path
    port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-pg-")))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "steward", password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{dbname}"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                              text=True, timeout=60, check=check)

    def init(self) -> Postgres:
        os.chmod(self.root, 0o755)
        shutil.chown(self.root, "postgres")
        self.port = free_port()
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        shutil.chown(pwfile, "postgres")
        self._as_postgres(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", USER,
                          "--pwfile", str(pwfile), "--auth-host=scram-sha-256",
                          "--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        self.start()
        self.psql("CREATE DATABASE steward", dbname="postgres")
        return self

    def socket_url(self, dbname: str = "steward") -> str:
        """Through the Unix socket: reachable while TCP is off (start(tcp=False))."""
        return (f"postgresql://{USER}:{PASSWORD}@/{dbname}?host={self.root}&port={self.port}")

    def start(self, tcp: bool = True) -> None:
        """tcp=False: only the Unix socket listens, so nodes on 127.0.0.1 still find the
        database down while a test writes to it."""
        listen = "127.0.0.1" if tcp else "''"
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={listen} "
                   "-c fsync=off")
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "stop", check=False)

    def psql(self, sql: str, dbname: str = "steward") -> str:
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
             "-d", dbname, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=30, env={**os.environ,
                                                             "PGPASSWORD": PASSWORD})
        if result.returncode != 0:
            raise AssertionError(f"psql {sql!r}: {result.stderr}")
        return result.stdout.strip()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
