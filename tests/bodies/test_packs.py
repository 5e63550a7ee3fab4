"""Packed local bodies (steward/bodies/packs.py): a day's bodies in a few append-only packs with an
index each, read back by key, through `steward bodies get`, after torn writes and crashes, and
at a fraction of the disk that one file per body took."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from steward.bodies import packs
from steward.bodies.stores import LocalStore
from steward.bodies.writer import find_key, read_document
from tests.support.bodies import chat_document, stored_bytes
from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.filesystems import fill, tmpfs
from tests.support.waiting import wait_for

TODAY = datetime.datetime.now(datetime.UTC).date()
DAY = f"key_a/{TODAY:%Y/%m/%d}"


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def index_lines(directory: Path) -> list[list[str]]:
    return [line.split(" ") for index in sorted(directory.glob("*.idx"))
            for line in index.read_text().splitlines()]


def open_under(root: Path) -> list[str]:
    """What this process has open under root."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(str(root)):
                found.append(target)
    return found


def disk_bytes(root: Path) -> int:
    """Blocks of every file and directory under root."""
    return sum(os.lstat(os.path.join(path, name)).st_blocks * 512
               for path, dirs, names in os.walk(root) for name in [*dirs, *names])


def test_bodies_of_a_day_go_to_one_pack_and_index(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    bodies = {f"{DAY}/r{n}.json.gz": os.urandom(100 + n) for n in range(3)}
    for key, data in bodies.items():
        store.put(key, data)
    store.put(f"key_b/{TODAY:%Y/%m/%d}/r0.json.gz", b"other key")
    day = tmp_path / DAY
    names = files(day)
    assert len(names) == 2 and names[0].endswith(".idx") and names[1].endswith(".pack")
    assert f"-{os.getpid()}-" in names[0]  # one writer per pack: this process
    assert {p.stat().st_mode & 0o777 for p in day.iterdir()} == {0o600}
    lines = index_lines(day)
    assert [(n, int(o), int(length)) for n, o, length, _ in lines] == [
        ("r0.json.gz", 0, 100), ("r1.json.gz", 100, 101), ("r2.json.gz", 201, 102)]
    assert (day / names[1]).read_bytes() == b"".join(bodies.values())
    fresh = LocalStore(tmp_path)  # another process's view: nothing cached
    assert all(fresh.get(key) == data for key, data in bodies.items())
    assert fresh.get(f"key_b/{TODAY:%Y/%m/%d}/r0.json.gz") == b"other key"
    with pytest.raises(FileNotFoundError):
        fresh.get(f"{DAY}/nope.json.gz")
    # Keys outside the day layout (the bucket probe's) stay plain files.
    store.put("steward-probe/x.json.gz", b"probe")
    assert (tmp_path / "steward-probe" / "x.json.gz").read_bytes() == b"probe"
    assert fresh.get("steward-probe/x.json.gz") == b"probe"


def test_the_last_entry_wins_also_across_processes(tmp_path: Path) -> None:
    key = f"{DAY}/dup.json.gz"
    first = LocalStore(tmp_path)
    first.put(key, b"one")
    first.put(key, b"two")  # the same pack: the later line wins
    assert LocalStore(tmp_path).get(key) == b"two"
    # A restarted gateway replays its pending bodies into a pack of its own, created later.
    replay = LocalStore(tmp_path)
    replay.put(key, b"three")
    assert len(list((tmp_path / DAY).glob("*.pack"))) == 2
    assert LocalStore(tmp_path).get(key) == b"three" and first.get(key) == b"three"
    assert LocalStore(tmp_path).usage()[0]["bodies"] == 1  # one body, however many copies


def test_a_torn_tail_loses_nothing_before_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for n in range(5):
        store.put(f"{DAY}/r{n}.json.gz", b"body %d" % n)
    day = tmp_path / DAY
    index = next(day.glob("*.idx"))
    pack = next(day.glob("*.pack"))
    size = pack.stat().st_size
    # A crash mid-entry: the body's bytes half there, its line half written.
    with pack.open("ab") as fh:
        fh.write(b"half a bo")
    with index.open("ab") as fh:
        fh.write(f"r5.json.gz {size} 12 dead".encode())
    reader = LocalStore(tmp_path)
    assert [reader.get(f"{DAY}/r{n}.json.gz") for n in range(5)] == [
        b"body %d" % n for n in range(5)]
    with pytest.raises(FileNotFoundError):
        reader.get(f"{DAY}/r5.json.gz")
    # The line completed, but its bytes never reached the pack (a power cut before the
    # flush): the checksum fails and the body reads as absent, as an unflushed file would.
    with index.open("ab") as fh:
        fh.write(b"beef\n")
    with pytest.raises(FileNotFoundError):
        reader.get(f"{DAY}/r5.json.gz")
    assert reader.get(f"{DAY}/r4.json.gz") == b"body 4"
    # Garbage lines (a zero-filled block after a crash) are skipped, not fatal.
    with index.open("ab") as fh:
        fh.write(b"\0" * 100 + b"\n")
    assert LocalStore(tmp_path).get(f"{DAY}/r0.json.gz") == b"body 0"
    assert LocalStore(tmp_path).usage()[0]["bodies"] == 6  # r5 is counted, unverified


def test_a_corrupt_copy_falls_back_to_an_earlier_intact_one(tmp_path: Path) -> None:
    key = f"{DAY}/dup.json.gz"
    LocalStore(tmp_path).put(key, b"intact first copy")
    LocalStore(tmp_path).put(key, b"replayed copy, torn")
    newest = sorted((tmp_path / DAY).glob("*.pack"))[-1]
    newest.write_bytes(newest.read_bytes()[:-5] + b"\0" * 5)
    assert LocalStore(tmp_path).get(key) == b"intact first copy"


def test_a_failed_write_is_cut_off_and_writing_goes_on(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "bodies")
    with tmpfs(tmp_path / "bodies", "1m") as root:
        store.put(f"{DAY}/a.json.gz", b"a" * 1000)
        filler = fill(root)
        os.truncate(filler, filler.stat().st_size - 128 * 1024)
        with pytest.raises(OSError):  # the disk is full half-way through this one
            store.put(f"{DAY}/big.json.gz", os.urandom(300_000))
        pack = next((root / DAY).glob("*.pack"))
        assert pack.stat().st_size == 1000  # the partial bytes are gone again
        filler.unlink()
        store.put(f"{DAY}/b.json.gz", b"b" * 1000)
        assert len(list((root / DAY).glob("*.pack"))) == 1  # still the same pack
        reader = LocalStore(root)
        assert reader.get(f"{DAY}/a.json.gz") == b"a" * 1000
        assert reader.get(f"{DAY}/b.json.gz") == b"b" * 1000
        with pytest.raises(FileNotFoundError):
            reader.get(f"{DAY}/big.json.gz")


def test_delete_hides_a_packed_body(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put(f"{DAY}/gone.json.gz", b"x")
    store.put(f"{DAY}/kept.json.gz", b"y")
    store.delete(f"{DAY}/gone.json.gz")
    store.delete(f"{DAY}/never-there.json.gz")  # nothing to hide: nothing written
    fresh = LocalStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        fresh.get(f"{DAY}/gone.json.gz")
    assert fresh.get(f"{DAY}/kept.json.gz") == b"y"
    assert [line[0] for line in index_lines(tmp_path / DAY)] == [
        "gone.json.gz", "kept.json.gz", "gone.json.gz"]
    assert fresh.usage()[0]["bodies"] == 1
    store.put(f"{DAY}/gone.json.gz", b"back")  # written again after its deletion
    assert LocalStore(tmp_path).get(f"{DAY}/gone.json.gz") == b"back"


def test_bodies_from_before_packing_are_still_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    old = tmp_path / DAY / "old.json.gz"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"one file")
    store.put(f"{DAY}/new.json.gz", b"packed")
    assert store.get(f"{DAY}/old.json.gz") == b"one file"
    assert store.locate("old.json.gz", TODAY) == f"{DAY}/old.json.gz"
    assert store.locate("new.json.gz", TODAY) == f"{DAY}/new.json.gz"
    assert store.locate("none.json.gz", TODAY) is None
    row = store.usage()[0]
    assert (row["bodies"], row["bytes"], row["files"]) == (2, len(b"one file") + 6, 3)
    store.delete(f"{DAY}/old.json.gz")
    assert not old.exists()


def test_retention_removes_packed_days(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for days_ago in (40, 2, 0):
        when = TODAY - datetime.timedelta(days=days_ago)
        for n in range(3):
            store.put(f"key_a/{when:%Y/%m/%d}/r{n}.json.gz", b"x" * 10)
    assert store.sweep(30 * 86400, time.time()) == (1, 3)
    assert store.sweep(86400, time.time()) == (1, 3)
    assert [row["bodies"] for row in store.usage()] == [3]
    # The writer's pack for a removed day is gone: writing to that day again starts anew.
    old = TODAY - datetime.timedelta(days=2)
    store.put(f"key_a/{old:%Y/%m/%d}/late.json.gz", b"late")
    assert LocalStore(tmp_path).get(f"key_a/{old:%Y/%m/%d}/late.json.gz") == b"late"


def test_packs_roll_by_size_and_close_idle_descriptors(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_BYTES", 1000)
    monkeypatch.setattr(packs, "MAX_OPEN", 2)
    store = LocalStore(tmp_path)
    keys = [f"key_{k}/{TODAY:%Y/%m/%d}/r{n}.json.gz" for n in range(6) for k in "abc"]
    for key in keys:
        store.put(key, key.encode() * 10)  # ~300 bytes: a pack holds three
    assert sorted(len(list((tmp_path / f"key_{k}/{TODAY:%Y/%m/%d}").glob("*.pack")))
                  for k in "abc") == [2, 2, 2]  # reopened after each close, rolled at 1000
    assert len(open_under(tmp_path)) == 4  # two packs open, two descriptors each
    reader = LocalStore(tmp_path)
    assert all(reader.get(key) == key.encode() * 10 for key in keys)


def test_threads_share_a_pack_processes_never_do(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, durable=False)

    def put(worker: int) -> None:
        for n in range(200):
            store.put(f"{DAY}/t{worker}-{n}.json.gz", b"%d-%d" % (worker, n) * 20)

    threads = [threading.Thread(target=put, args=(w,)) for w in range(4)]
    script = ("import sys; from pathlib import Path; from steward.bodies.stores import LocalStore\n"
              "store = LocalStore(Path(sys.argv[1]), durable=False)\n"
              "for n in range(500): store.put(f'{sys.argv[2]}/p{sys.argv[3]}-{n}.json.gz', "
              "b'%d' % n * 30)\n")
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), DAY, str(c)])
                for c in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [child.wait(60) for child in children] == [0, 0]
    store.flush()
    assert len(list((tmp_path / DAY).glob("*.pack"))) == 3  # this process's and the two
    reader = LocalStore(tmp_path)
    assert all(reader.get(f"{DAY}/t{w}-{n}.json.gz") == b"%d-%d" % (w, n) * 20
               for w in range(4) for n in range(200))
    assert all(reader.get(f"{DAY}/p{c}-{n}.json.gz") == b"%d" % n * 30
               for c in range(2) for n in range(500))
    assert reader.usage()[0]["bodies"] == 1800


def test_durable_puts_and_a_forked_child(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, durable=True)
    store.put(f"{DAY}/parent.json.gz", b"p")
    pid = os.fork()
    if pid == 0:  # the child must not append to the parent's pack
        try:
            store.put(f"{DAY}/child.json.gz", b"c")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    store.put(f"{DAY}/parent2.json.gz", b"q")
    assert len(list((tmp_path / DAY).glob("*.pack"))) == 2
    reader = LocalStore(tmp_path)
    assert [reader.get(f"{DAY}/{n}.json.gz") for n in ("parent", "child", "parent2")] == [
        b"p", b"c", b"q"]


def test_ten_thousand_bodies_read_back_by_id_at_a_fraction_of_the_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    root = home / "bodies"
    store = LocalStore(root, durable=False)
    rng = random.Random(22)
    now = time.time()
    documents = dict(chat_document(rng, rng.choice(("key_a", "key_b")), now)
                     for _ in range(10_000))
    for key, data in documents.items():
        store.put(key, data)
    store.flush()
    reader = LocalStore(root)  # as `steward bodies get` opens it
    ids = [key.rsplit("/", 1)[1].removesuffix(".json.gz") for key in documents]
    for request_id, data in zip(ids, documents.values(), strict=True):
        assert read_document(home, reader, request_id) == gzip.decompress(data)  # by id alone
    assert all(find_key(home, reader, ids[n]) == key
               for n, key in enumerate(documents) if n % 100 == 0)
    stored = sum(len(d) for d in documents.values())
    ratio = disk_bytes(root) / stored
    print(f"10,000 bodies: {stored} bytes of documents, {disk_bytes(root)} on disk, "
          f"{ratio:.3f}x")
    assert ratio <= 1.3
    shown = json.loads(cli("bodies", "get", ids[4321], home=home).stdout)
    assert shown["id"] == ids[4321] and shown["response"]["status"] == 200
    usage = json.loads(cli("bodies", "du", "--json", home=home).stdout)
    assert sum(row["bodies"] for row in usage) == 10_000 and len(usage) == 2
    assert sum(row["files"] for row in usage) == 4


BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello packs"}]}


def test_the_daemon_packs_bodies_and_bodies_get_reads_them(fresh_home: tuple[Path, str],
                                                           upstream: FakeUpstream) -> None:
    home, key = fresh_home
    ids = []
    for _ in range(2):  # two runs: two writing processes, one pack each
        running = Daemon(home, env=provider_env(upstream.url)).start()
        try:
            for _ in range(3):
                got = httpx.post(running.url + "/v1/chat/completions", json=BODY, timeout=30,
                                 headers={"X-Majordomo-Key": key,
                                          "Authorization": "Bearer sk-secret-1"})
                assert got.status_code == 200
                ids.append(got.headers["x-majordomo-request-id"])
            records = wait_for(lambda d=running: [r for r in d.records() if r["id"] in ids],
                               10, "the records")
            wait_for(lambda rs=records: all(stored_bytes(r["body_ref"]) for r in rs), 10,
                     "the bodies")
        finally:
            running.stop()
    refs = {r["id"]: r["body_ref"] for r in Daemon(home).records()}
    day = Path(refs[ids[0]].removeprefix("file://")).parent
    assert all(Path(refs[i].removeprefix("file://")).parent == day for i in ids)
    names = files(day)
    assert len(names) == 4 and {n.rsplit(".", 1)[1] for n in names} == {"pack", "idx"}
    assert sorted(line[0] for line in index_lines(day)) == sorted(f"{i}.json.gz" for i in ids)
    for segment in (home / "spool").glob("*.ndjson"):  # by the id's day, without records
        segment.unlink()
    total = next(line for line in cli("bodies", "du", home=home).stdout.splitlines()
                 if "total" in line)
    assert [cell.strip() for cell in total.split("│")[3:6:2]] == ["6", "4"]  # bodies, files
    for request_id in (ids[0], ids[-1]):  # one from each run's pack
        shown = json.loads(cli("bodies", "get", request_id, home=home).stdout)
        assert shown["id"] == request_id and shown["request"]["body"] == BODY
        assert "sk-secret-1" not in json.dumps(shown)
