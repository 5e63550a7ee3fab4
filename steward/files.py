"""Writing a file so that a crash or power loss leaves the old version or the new, never half."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Temp file, fsync, rename, fsync the directory. On failure (a full disk) the temp file is
    removed, so a failed write never leaves its partial bytes taking space.

    durable=False skips both fsyncs: the file is still whole or absent after a crash of the
    process, and the caller flushes the filesystem itself (sync_filesystem) on its own clock."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private(path: Path, text: str) -> None:
    """Atomic replace with 0600 permissions: a crash never leaves half a config."""
    write_atomic(path, text.encode())


def sync_filesystem(path: Path) -> None:
    """Flush everything written to path's filesystem with one syncfs(2) (Linux); elsewhere,
    sync(2)."""
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
        return libc if libc is not None and hasattr(libc, "syncfs") else None
    except OSError:
        return None
