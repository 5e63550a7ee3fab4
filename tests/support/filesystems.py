"""Small real filesystems for disk-fault tests: a tmpfs of a chosen size, filled or read-only.

Mounting needs root (CAP_SYS_ADMIN). Elsewhere the tests that need it skip, unless
STEWARD_REQUIRE_MOUNT_TEST=1 (set by CI) makes a missing capability a failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {result.stderr.strip()}")


def can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    if not can_mount():
        if os.environ.get("STEWARD_REQUIRE_MOUNT_TEST") == "1":
            raise AssertionError("disk-fault tests need root to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0700" + (",ro" if read_only else ""),
           "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path: Path, read_only: bool) -> None:
    _mount("-o", "remount," + ("ro" if read_only else "rw"), str(path))


def fill(path: Path) -> Path:
    """Take every free byte of path's filesystem; delete the returned file to give them back."""
    filler = path / "filler"
    block = b"\0" * (1024 * 1024)
    with filler.open("wb", buffering=0) as fh:
        for size in (len(block), 4096, 1):
            try:
                while True:
                    fh.write(block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler
