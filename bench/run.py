"""`make bench`: requests/s, latency and CPU per request, direct vs through Steward.

Layout on 2 cores: the upstream and wrk share core 0, Steward (one worker) gets core 1, so
Steward's CPU per request is measured on a core of its own. CPU ms/request (user+system time of
Steward's process tree / requests served) is the steady figure; req/s varies ±15-25% per run.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import Daemon, free_port, init_home

DURATION = float(os.environ.get("BENCH_DURATION", "5"))
CONCURRENCY = (1, 16, 64)
TICKS = os.sysconf("SC_CLK_TCK")
PROMPT = '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the benchmark"}]%s}'


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (Debian package)...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                   capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                       capture_output=True)
    return shutil.which("wrk") or "wrk"


def tree(root: int) -> list[int]:
    """root and all its descendants (Hypercorn workers, when there are several)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        found += frontier
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / TICKS


def rss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            out.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            continue
    return out


def to_ms(text: str) -> float:
    """wrk's '512.00us' / '1.20ms' / '2.00s'; NaN when it printed something else."""
    match = re.match(r"([\d.]+)(us|ms|s)$", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def wrk(url: str, script: Path, connections: int) -> dict[str, float]:
    result = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t", "1", "-c", str(connections), "-d", f"{DURATION:g}s",
         "--latency", "-s", str(script), url], capture_output=True, text=True, check=True)
    text = result.stdout
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),  # type: ignore[union-attr]
        "p50": to_ms(re.search(r"50%\s+(\S+)", text).group(1)),  # type: ignore[union-attr]
        "p99": to_ms(re.search(r"99%\s+(\S+)", text).group(1)),  # type: ignore[union-attr]
        "errors": len(re.findall(r"Non-2xx|Socket errors", text)),
    }


def script(path: Path, key: str | None, stream: bool) -> Path:
    body = PROMPT % (',"stream":true' if stream else "")
    lines = ['wrk.method = "POST"', f"wrk.body = '{body}'",
             'wrk.headers["Content-Type"] = "application/json"',
             'wrk.headers["Authorization"] = "Bearer sk-bench"']
    if key:
        lines.append(f'wrk.headers["X-Majordomo-Key"] = "{key}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def time_to_first_byte(host: str, port: int, key: str | None, n: int = 300) -> float:
    """Median ms from sending a streaming request to its response headers, one connection."""
    conn = http.client.HTTPConnection(host, port)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    if key:
        headers["X-Majordomo-Key"] = key
    body = PROMPT % ',"stream":true'
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        samples.append((time.perf_counter() - start) * 1000)
        response.read()
    conn.close()
    return statistics.median(samples[20:])


def measure(name: str, url: str, tmp: Path, key: str | None, pids: list[int],
            workers: int, rows: list[list[str]], levels: tuple[int, ...]) -> dict:
    results = {}
    for stream in (False, True):
        lua = script(tmp / f"{name}-{stream}.lua", key, stream)
        for c in levels:
            before = cpu_seconds(pids)
            got = wrk(url + "/v1/chat/completions", lua, c)
            cpu = cpu_seconds(pids) - before
            cpu_ms = cpu * 1000 / got["requests"] if pids else float("nan")
            results[(stream, c)] = got
            rows.append([name, "stream" if stream else "json", str(c), f"{got['rps']:,.0f}",
                         f"{got['p50']:.2f}", f"{got['p99']:.2f}",
                         "-" if not pids else f"{cpu_ms:.2f}",
                         "-" if not pids else f"{max(rss_mb(pids) or [0]):.0f}",
                         "errors!" if got["errors"] else ""])
            print("  ".join(rows[-1]), flush=True)
    return results


def main() -> None:
    ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="steward-bench-"))
    upstream_port = free_port()
    upstream = subprocess.Popen(["taskset", "-c", "0", sys.executable,
                                 str(Path(__file__).with_name("upstream.py")), str(upstream_port)],
                                stdout=subprocess.PIPE, text=True)
    assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    rows: list[list[str]] = []
    header = ["target", "mode", "conns", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "RSS MB", ""]
    print("  ".join(header), flush=True)
    home = tmp / "home"
    key = init_home(home)
    env = {"STEWARD_PROVIDERS__OPENAI__BASE_URL": upstream_url + "/v1",
           "STEWARD_METADATA__FSYNC": "1s"}
    try:
        direct = measure("direct", upstream_url, tmp, None, [], 1, rows, CONCURRENCY)
        ttfb_direct = time_to_first_byte("127.0.0.1", upstream_port, None)
        one = Daemon(home, env=env, prefix=("taskset", "-c", "1")).start()
        try:
            via = measure("steward-1w", one.url, tmp, key, tree(one.process.pid), 1, rows,
                          CONCURRENCY)
            ttfb_via = time_to_first_byte("127.0.0.1", one.port, key)
            records = len(one.records())
        finally:
            one.stop()
        two = Daemon(home, env=env, args=("--workers", "2")).start()
        try:
            measure("steward-2w", two.url, tmp, key, tree(two.process.pid), 2, rows, (16, 64))
        finally:
            two.stop()
    finally:
        upstream.terminate()
        upstream.wait()
    added = via[(False, 1)]["p50"] - direct[(False, 1)]["p50"]
    print()
    print(f"added p50 latency, one caller (json): {added:.2f} ms")
    print(f"time to first byte on a stream: direct {ttfb_direct:.2f} ms, through Steward "
          f"{ttfb_via:.2f} ms (+{ttfb_via - ttfb_direct:.2f} ms)")
    print(f"metadata records written by the one-worker run: {records:,}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
