"""`make profile`: where one pinned worker's CPU goes, per request, by stage and by component.

The same layout as `make bench` (bench/run.py): one Steward worker pinned to its own core, the
mock upstream and wrk on the other. While wrk sends JSON chat completions (16 connections) or
paced SSE streams (--stream, 64), py-spy samples the serving worker without stopping it; idle
samples (a thread waiting in epoll or a lock) are not counted, so the shares are shares of its
CPU. The body writer process is not sampled (py-spy cannot tell its idle loop from work): its
CPU per request is read from /proc, as the worker's is. Each sample is charged twice:

- to a stage: the innermost pipeline stage on its stack (auth, route, credentials, body, admit,
  forward, relay, account, hand-off), or to the server (Hypercorn and h11 outside our handler),
  the event loop, or a background task, by the module it runs in;
- to a component: the package of its innermost frame (steward.<part>, aiohttp, hypercorn, h11,
  asyncio, json, zlib, logging...).

Shares times the CPU ms per request measured over the same seconds give ms per request. The
output is a Markdown table, ready for the README.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    CONFIGS,
    Bench,
    Layout,
    cpu_seconds,
    ensure_wrk,
    mock_upstream,
    steward,
)
from tests.support.daemon import init_home  # noqa: E402

STAGES = {  # pipeline.py function -> stage
    "_auth": "auth", "_route": "route", "_credentials": "credentials", "_read_body": "body",
    "admit": "admit", "_capture": "capture", "_forward": "forward", "_relay": "relay",
    "_account": "account", "submit": "hand-off", "append": "hand-off",
}
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*?)(?::\d+)?\)$")


def component(path: str) -> str:
    """The package a frame's file belongs to: steward.<part>, or the library's name."""
    parts = Path(path).with_suffix("").parts
    if "steward" in parts:
        rest = parts[parts.index("steward") + 1:]
        return "steward." + rest[0] if rest else "steward"
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    name = Path(path).stem
    for lib in ("asyncio", "json", "logging", "concurrent", "email", "http"):
        if f"/{lib}/" in path:
            return lib
    return name or "?"


def classify(stack: list[tuple[str, str]]) -> tuple[str, str]:
    """(stage, component) of one sample; stack is root first: (function, file)."""
    stage = None
    for func, path in stack:
        if path.endswith("proxy/pipeline.py") and func in STAGES:
            stage = STAGES[func]
        elif path.endswith("budgets/governor.py") and func in ("admit", "settle"):
            stage = "admit" if func == "admit" else "account"
    leaf_path = stack[-1][1]
    comp = component(leaf_path)
    if stage is None:
        files = " ".join(p for _, p in stack)  # py-spy names files from site-packages down
        if "dashboard/" in files:
            stage = "dashboard indexer (background thread)"
        elif "bodies/" in files:
            stage = "bodies: journal write and its upkeep"
        elif any(p.endswith("proxy/pipeline.py") for _, p in stack):
            stage = "request, between stages (ending, hand-off)"
        elif "hypercorn/" in files or "h11/" in files:
            stage = "server (Hypercorn, h11)"
        elif "aiohttp/" in files:
            stage = "upstream client (aiohttp) callbacks"
        elif "steward/" in files:
            stage = "other Steward background (spool fsync, metrics, reports)"
        else:
            stage = "event loop and the rest"
    return stage, comp


def parse(raw: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    stages: collections.Counter[str] = collections.Counter()
    comps: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stack = []
        for frame in frames.split(";"):
            match = FRAME.match(frame.strip())
            if match:
                stack.append((match["func"], match["file"]))
        if not stack or stack[0][0].startswith("process "):
            stack = stack[1:] or stack
        if not stack:
            continue
        n = int(count)
        stage, comp = classify(stack)
        stages[stage] += n
        comps[comp] += n
        total += n
    return stages, comps, total


def table(title: str, counts: collections.Counter[str], total: int, cpu_ms: float,
          top: int = 14) -> list[str]:
    lines = [f"| {title} | share of CPU | ms per request |", "|---|---|---|"]
    shown = counts.most_common(top)
    for name, n in shown:
        lines.append(f"| {name} | {100 * n / total:.1f}% | {cpu_ms * n / total:.3f} |")
    rest = total - sum(n for _, n in shown)
    if rest:
        lines.append(f"| (the rest) | {100 * rest / total:.1f}% | {cpu_ms * rest / total:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="everything", choices=sorted(CONFIGS))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--stream", action="store_true", help="paced SSE streams, c=64")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--keep", type=Path, help="also write py-spy's raw stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: `make profile` installs it into .venv")
    ensure_wrk()
    layout = Layout.pick()
    with tempfile.TemporaryDirectory(prefix="steward-profile-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        key = init_home(home)
        bench = Bench(layout, args.duration, tmp)
        with mock_upstream(layout) as mock, steward(args.config, home, key, mock,
                                                     layout.one) as one:
            bench.warm(one)
            raw = tmp / "stacks.txt"
            pids = one.pids()
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(one.root), "--nonblocking",
                 "--rate", str(args.rate), "--duration", str(int(args.duration)),
                 "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            got: dict[str, object] = {}
            before = {pid: cpu_seconds([pid]) for pid in pids}
            load = threading.Thread(target=lambda: got.update(cell=bench.wrk(
                one, args.stream, 64 if args.stream else 16, None, args.duration)))
            load.start()
            load.join()
            spy.wait()
            cell = got["cell"]
            cpu = {pid: cpu_seconds([pid]) - start for pid, start in before.items()}
            names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
            if not raw.exists():
                raise SystemExit(f"py-spy wrote nothing (exit {spy.returncode}): "
                                 f"{spy.stderr.read().decode()[-500:]}")
            if args.keep:
                shutil.copyfile(raw, args.keep)
        stages, comps, total = parse(raw)
    requests = cell.requests  # type: ignore[attr-defined]
    per_request = cpu[one.root] * 1000 / requests  # the worker's
    others = ", ".join(f"{names[pid]} {ms * 1000 / requests:.2f}" for pid, ms in cpu.items()
                       if pid != one.root and ms > 0)
    what = "SSE streams, 64 connections" if args.stream else "JSON chat completions, c=16"
    print(f"\n{args.config}: {what}; {cell.rps:,.0f}/s; the serving worker "  # type: ignore[attr-defined]
          f"{per_request:.2f} CPU ms per request ({total:,} samples at {args.rate}/s, idle "
          f"samples not counted); other processes, CPU ms per request: {others or 'none'}\n")
    print("\n".join(table("stage", stages, total, per_request)))
    print()
    print("\n".join(table("component (innermost frame)", comps, total, per_request)))


if __name__ == "__main__":
    main()
