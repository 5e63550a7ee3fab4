"""`python bench/bodies_overhead.py [N]`: disk used by N stored bodies, one file each vs packed.

Builds N realistic chat documents (the gzipped JSON the gateway stores: headers, a prompt of
varying length, a completion with usage), writes them into a local store under the old layout
(one file per body, renamed into place) and the packed one (steward/bodies/packs.py), syncs,
and prints per layout: files, the documents' bytes, the bytes on disk (st_blocks of every file
and directory under the root) and their ratio. The directory defaults to one under the current
directory, so the figure is that disk's (BODIES_BENCH_DIR to choose another).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steward.bodies.stores import LocalStore
from steward.files import sync_filesystem, write_atomic
from tests.support.bodies import chat_document


def disk_use(root: Path) -> tuple[int, int]:
    """(files, bytes of blocks) of everything under root, directories included."""
    files = blocks = 0
    for path, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            st = os.lstat(os.path.join(path, name))
            blocks += st.st_blocks * 512
            files += name in names
    return files, blocks


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rng = random.Random(22)
    now = time.time()
    keys = [f"key_{i:012x}" for i in range(3)]
    print(f"building {n} documents...", flush=True)
    docs = [chat_document(rng, rng.choice(keys), now) for _ in range(n)]
    data = sum(len(d) for _, d in docs)
    base = Path(os.environ.get("BODIES_BENCH_DIR", "."))
    print(f"{n} bodies, {data / n:.0f} bytes each on average (gzip)\n")
    print(f"{'layout':<22}{'files':>8}{'data':>12}{'on disk':>12}{'ratio':>8}{'write s':>9}")
    for layout in ("one file per body", "packed"):
        root = Path(tempfile.mkdtemp(prefix="steward-bodies-bench-", dir=base))
        try:
            started = time.perf_counter()
            if layout == "packed":
                store = LocalStore(root, durable=False)
                for key, doc in docs:
                    store.put(key, doc)
                store.flush()
            else:
                for key, doc in docs:
                    path = root / key
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    write_atomic(path, doc, durable=False)
                sync_filesystem(root)
            took = time.perf_counter() - started
            files, on_disk = disk_use(root)
            print(f"{layout:<22}{files:>8}{data / 2**20:>10.1f}Mi{on_disk / 2**20:>10.1f}Mi"
                  f"{on_disk / data:>8.2f}{took:>9.2f}")
        finally:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
