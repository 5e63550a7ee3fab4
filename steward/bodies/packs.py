"""Compact local bodies: a day's bodies appended to a few pack files instead of one file each.

One ~1 KiB gzip document alone in a file costs a whole 4 KiB block (a 200k-request soak: 164 MB
of bodies on 781 MB of disk). Here each writing process appends the bodies of one key and day
to a pack of its own in that day's directory, and one line per body to the pack's index beside
it:

    <root>/<key id>/<yyyy>/<mm>/<dd>/<utc stamp>-<pid>-<random>.pack    the documents, back to back
    <root>/<key id>/<yyyy>/<mm>/<dd>/<utc stamp>-<pid>-<random>.idx     one line per entry:
        <name> <offset> <length> <crc32 of name and document, hex>\\n    a body
        <name> - - -\\n                                                  a deletion

Object keys do not change (`<key id>/<yyyy>/<mm>/<dd>/<request id>.json.gz`): the key names the
day directory and the name to look up in that directory's indexes, so body_ref, `steward bodies
get` and retention (which removes whole day directories) work as before.

Crash behaviour: a process writes both files at offsets it tracks and cuts a failed write off
again, and no other process (nor a later run of this one) ever writes to its packs. So a crash
can leave only a torn tail: an index line without its newline (ignored), or a line whose bytes
never reached the pack (its checksum fails: that body reads as absent, exactly as it would
have without packing, and the bodies before it are intact). For one name the last entry wins:
within a pack the later line, across packs the later-created one (names sort by creation time),
so a body re-put after a crash is found again, whichever copy survived.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PACK_SUFFIX = ".pack"
INDEX_SUFFIX = ".idx"
# A pack past this size is closed and the next body starts another: a day of heavy traffic is
# several packs, none of them huge to copy or inspect.
PACK_BYTES = 64 * 1024 * 1024
# Descriptors: a process writing to many keys' days keeps at most this many packs open (two
# descriptors each); the least recently used is closed and reopened when written again.
MAX_OPEN = 32
# Keys packed: <key id>/<yyyy>/<mm>/<dd>/<name>, with a name that fits an index line. Anything
# else (`steward bucket test`'s probe, say) stays a plain file.
_DAY_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*/\d{4}/\d{2}/\d{2}/"
                      r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")
_DELETED = b"-"

Where = tuple[int, int, int]  # offset, length, crc


def split_key(key: str) -> tuple[str, str] | None:
    """(day directory relative to the root, name) of a key in the day layout, else None."""
    if not _DAY_KEY.fullmatch(key) or key.endswith((PACK_SUFFIX, INDEX_SUFFIX)):
        return None
    day, name = key.rsplit("/", 1)
    return day, name


def _checksum(name: str, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(name.encode()))


def _parse(line: bytes) -> tuple[str, Where | None] | None:
    """An index line as (name, where) — where None for a deletion — or None if it is not one."""
    parts = line.split(b" ")
    if len(parts) != 4:
        return None
    try:
        name = parts[0].decode("ascii")
        if parts[1:] == [_DELETED] * 3:
            return name, None
        offset, length, crc = int(parts[1]), int(parts[2]), int(parts[3], 16)
    except ValueError:
        return None
    return (name, (offset, length, crc)) if offset >= 0 and length >= 0 else None


@dataclass
class _Pack:
    """One of this process's packs, as this process has written it."""

    day: Path
    stem: str
    size: int = 0  # bytes in the pack
    index_size: int = 0  # bytes in the index
    fds: tuple[int, int] | None = None  # (pack, index) while open

    @property
    def path(self) -> Path:
        return self.day / (self.stem + PACK_SUFFIX)

    @property
    def index(self) -> Path:
        return self.day / (self.stem + INDEX_SUFFIX)

    def close(self) -> None:
        if self.fds is not None:
            for fd in self.fds:
                os.close(fd)
            self.fds = None


@dataclass
class _Index:
    """What a reader has parsed of one index file so far."""

    ino: int
    read: int = 0  # bytes consumed, through the last complete line
    seen: int = -1  # the file's size at the last look
    entries: dict[str, Where | None] = field(default_factory=dict)


@dataclass
class DayUsage:
    files: int = 0  # files on disk
    bodies: int = 0  # bodies readable: plain files plus live packed entries
    bytes: int = 0  # their stored (compressed) bytes
    disk_bytes: int = 0  # blocks the files occupy


class Packs:
    """This process's packs under one root, and what it has read of everyone's indexes.

    Thread-safe: body-writer threads put concurrently. Writing holds one lock for the two
    writes (a copy into the page cache); the fsyncs of a durable put run outside it, on
    duplicated descriptors, so they overlap as separate files' fsyncs did."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._current: dict[Path, _Pack] = {}  # day directory -> the pack this process fills
        self._open: OrderedDict[Path, _Pack] = OrderedDict()  # those with descriptors, LRU first
        self._read_lock = threading.RLock()
        self._indexes: dict[str, _Index] = {}

    # -- writing ----------------------------------------------------------------------------

    def put(self, day: str, name: str, data: bytes, durable: bool) -> None:
        """Append one body. durable: fsynced (pack and index) before returning; otherwise the
        caller's flush (syncfs) makes it so."""
        crc = _checksum(name, data)
        self._append(self.root / day, name, data, lambda offset: (
            f"{name} {offset} {len(data)} {crc:08x}\n".encode()), durable)

    def delete(self, day: str, name: str, durable: bool) -> None:
        """Packs are append-only (rewriting one would race its writer), so a deletion is an
        index line that hides the body; its bytes go when retention removes the day."""
        if self.find(day, name):
            self._append(self.root / day, name, b"",
                         lambda _: f"{name} - - -\n".encode(), durable)

    def _append(self, day: Path, name: str, data: bytes, line: Callable[[int], bytes],
                durable: bool) -> None:
        with self._lock:
            pack, created = self._pack_for(day, len(data))
            assert pack.fds is not None
            pack_fd, index_fd = pack.fds
            entry = line(pack.size)
            try:
                _write_at(pack_fd, data, pack.size)
                _write_at(index_fd, entry, pack.index_size)
            except OSError:
                self._cut(pack)
                raise
            pack.size += len(data)
            pack.index_size += len(entry)
            synced = (os.dup(pack_fd), os.dup(index_fd)) if durable else ()
        try:
            for fd in synced:
                os.fdatasync(fd)
        finally:
            for fd in synced:
                os.close(fd)
        if durable and created:
            _sync_dirs(day, self.root)

    def _cut(self, pack: _Pack) -> None:
        """After a failed write: both files back to their last whole entry, or, if even that
        fails, the pack is given up so that nothing is ever appended after a torn entry."""
        assert pack.fds is not None
        try:
            os.ftruncate(pack.fds[0], pack.size)
            os.ftruncate(pack.fds[1], pack.index_size)
        except OSError:
            self._open.pop(pack.day, None)
            self._current.pop(pack.day, None)
            pack.close()

    def _pack_for(self, day: Path, size: int) -> tuple[_Pack, bool]:
        """This process's open pack for a day (under self._lock), and whether it is new."""
        if os.getpid() != self._pid:  # a forked child never appends to its parent's packs
            for inherited in self._open.values():
                inherited.close()
            self._pid, self._current, self._open = os.getpid(), {}, OrderedDict()
        pack = self._current.get(day)
        created = False
        if pack is not None and pack.size and pack.size + size > PACK_BYTES:
            self._open.pop(day, None)
            pack.close()
            pack = None
        if pack is not None and pack.fds is None and not self._reopen(pack):
            pack = None
        if pack is not None and pack.fds is not None and os.fstat(pack.fds[0]).st_nlink == 0:
            self._open.pop(day, None)  # retention removed the day: appending would lose it
            pack.close()
            pack = None
        if pack is None:
            pack, created = self._create(day), True
            self._current[day] = pack
        self._open[day] = pack
        self._open.move_to_end(day)
        while len(self._open) > MAX_OPEN:
            _, idle = self._open.popitem(last=False)
            idle.close()
        return pack, created

    def _reopen(self, pack: _Pack) -> bool:
        """A pack closed for descriptors, opened again if it is still exactly as written."""
        try:
            data_fd = os.open(pack.path, os.O_WRONLY)
        except OSError:
            return False  # gone (retention removed the day): a new pack
        try:
            pack.fds = (data_fd, os.open(pack.index, os.O_WRONLY))
        except OSError:
            os.close(data_fd)
            return False
        if (os.fstat(pack.fds[0]).st_size, os.fstat(pack.fds[1]).st_size) != (
                pack.size, pack.index_size):
            pack.close()
            return False
        return True

    def _create(self, day: Path) -> _Pack:
        day.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = time.time_ns()
        stamp = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
                 + f".{now // 1000 % 10**6:06d}")
        pack = _Pack(day, f"{stamp}Z-{os.getpid()}-{secrets.token_hex(3)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        data_fd = os.open(pack.path, flags, 0o600)
        try:
            pack.fds = (data_fd, os.open(pack.index, flags, 0o600))
        except OSError:
            os.close(data_fd)
            pack.path.unlink(missing_ok=True)
            raise
        return pack

    # -- reading ----------------------------------------------------------------------------

    def get(self, day: str, name: str) -> bytes:
        """The last intact entry for a name in a day directory; FileNotFoundError if none (or
        deleted)."""
        directory = os.path.join(self.root, day)  # strings: pathlib was half of a lookup
        for stem in sorted(self._stems(directory), reverse=True):
            entries = self._entries(os.path.join(directory, stem + INDEX_SUFFIX))
            if name not in entries:
                continue
            where = entries[name]
            if where is None:
                break  # deleted
            data = _read_entry(os.path.join(directory, stem + PACK_SUFFIX), name, where)
            if data is not None:
                return data
        raise FileNotFoundError(errno.ENOENT, "no such body", os.path.join(directory, name))

    def find(self, day: str, name: str) -> bool:
        """Whether a day directory's packs hold a live entry for a name (unverified)."""
        directory = os.path.join(self.root, day)
        for stem in sorted(self._stems(directory), reverse=True):
            entries = self._entries(os.path.join(directory, stem + INDEX_SUFFIX))
            if name in entries:
                return entries[name] is not None
        return False

    def live(self, directory: Path) -> dict[str, int]:
        """name -> length of every body the day's packs hold (last entry wins)."""
        found: dict[str, int] = {}
        for stem in sorted(self._stems(str(directory))):
            with self._read_lock:  # another thread may be adding to the same entries
                index = os.path.join(directory, stem + INDEX_SUFFIX)
                for name, where in self._entries(index).items():
                    if where is None:
                        found.pop(name, None)
                    else:
                        found[name] = where[1]
        return found

    def usage(self, directory: Path) -> DayUsage:
        """One day directory: its files and their blocks, and the bodies readable from it
        (bodies written one file each before packing count as well)."""
        use = DayUsage()
        plain: set[str] = set()
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                use.files += 1
                use.disk_bytes += st.st_blocks * 512
                if not entry.name.endswith((PACK_SUFFIX, INDEX_SUFFIX)) \
                        and not entry.name.startswith("."):  # not a write_atomic temp file
                    plain.add(entry.name)
                    use.bodies += 1
                    use.bytes += st.st_size
        for name, length in self.live(directory).items():
            if name not in plain:
                use.bodies += 1
                use.bytes += length
        return use

    def _stems(self, directory: str) -> list[str]:
        try:
            with os.scandir(directory) as entries:
                return [e.name[:-len(INDEX_SUFFIX)] for e in entries
                        if e.name.endswith(INDEX_SUFFIX)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _entries(self, path: str) -> dict[str, Where | None]:
        """An index's entries, reading only what was appended since the last look; a torn or
        half-written last line is left for the next look."""
        with self._read_lock:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._indexes.pop(path, None)
                return {}
            index = self._indexes.get(path)
            if index is None or index.ino != st.st_ino or st.st_size < index.read:
                index = self._indexes[path] = _Index(st.st_ino)
            if st.st_size == index.seen:
                return index.entries  # nothing appended since the last look
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return index.entries
            try:
                chunk = _read_at(fd, st.st_size - index.read, index.read)
            finally:
                os.close(fd)
            end = chunk.rfind(b"\n") + 1
            for line in chunk[:end].split(b"\n")[:-1]:
                parsed = _parse(line)
                if parsed is not None:
                    index.entries[parsed[0]] = parsed[1]
            index.read += end
            index.seen = index.read + len(chunk) - end
            return index.entries


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_at(fd: int, length: int, offset: int) -> bytes:
    pieces = []
    while length > 0:
        piece = os.pread(fd, length, offset)
        if not piece:
            break
        pieces.append(piece)
        length, offset = length - len(piece), offset + len(piece)
    return b"".join(pieces)


def _read_entry(pack: str, name: str, where: Where) -> bytes | None:
    """An entry's bytes if they are all there and match their checksum, else None."""
    offset, length, crc = where
    try:
        fd = os.open(pack, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = _read_at(fd, length, offset)
    finally:
        os.close(fd)
    return data if len(data) == length and _checksum(name, data) == crc else None


def _sync_dirs(day: Path, root: Path) -> None:
    """A new pack's directory entry, and those of the directories created for it, on disk."""
    directory = day
    while True:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if directory == root or directory.parent == directory:
            return
        directory = directory.parent
