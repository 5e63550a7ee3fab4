"""The leak scan, for any secret: after a daemon has served, none of them may appear in any
file of its home (spool, logs, database), in any stored body (decompressed), or in what the
CLI shows."""

from __future__ import annotations

import gzip

from tests.support.bodies import stored_bytes
from tests.support.daemon import Daemon, cli


def assert_no_secrets(daemon: Daemon, secrets: list[str | bytes]) -> None:
    """Stops the daemon first, so everything it would write is on disk. The master key's own
    file is the one place the master key may be; the sealed database must hold only
    ciphertext of everything else."""
    shown = "".join(cli(*command, home=daemon.home).stdout for command in (
        ("config", "show"), ("providers", "list"), ("secrets", "status")))
    daemon.stop()
    wanted = [s.encode() if isinstance(s, str) else s for s in secrets]
    master_file = daemon.home / "master.key"
    if master_file.exists():
        master = bytes.fromhex(master_file.read_text().strip())
        wanted += [master, master.hex().encode()]
    files = [p for p in daemon.home.rglob("*") if p.is_file() and p != master_file]
    assert any(p.suffix == ".ndjson" for p in files) and daemon.log_path in files
    for path in files:
        data = path.read_bytes()
        for secret in wanted:
            assert secret not in data, f"{secret[:8]!r}… found in {path}"
    # Bodies are stored gzipped: a secret in one would not show in the raw bytes above.
    for record in daemon.records():
        stored = stored_bytes(record["body_ref"]) if record["body_ref"] else None
        document = gzip.decompress(stored) if stored else b""
        for secret in wanted:
            assert secret not in document, f"{secret[:8]!r}… found in {record['body_ref']}"
    for secret in wanted:
        assert secret.decode("latin-1") not in shown, f"{secret[:8]!r}… shown by the CLI"
