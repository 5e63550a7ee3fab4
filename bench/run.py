"""`make bench` and `make bench-peers`: every figure the README reports, in one sitting.

Layout: one Steward worker pinned with taskset to a core of its own; the mock upstream
(bench/upstream.py), wrk and this script's own stream client on the other core(s). CPU per
request is the user+system time of the server's process tree divided by the requests served in
the cell, so it is the steady figure; req/s moves more between runs on a shared machine.

Configurations (--config, a comma-separated list; default all three), by the keys they set on
top of a fresh `steward init` home whose OpenAI base URL points at the mock:
  everything  nothing else: Steward's defaults. Usage, cost (bundled price table), the spool
              (metadata.fsync = "1s"), body capture to <home>/bodies (bodies.fsync = "1s"),
              Prometheus metrics and one JSON access line per request (stderr, to a file).
  bodies-off  bodies.enabled = false (STEWARD_BODIES__ENABLED=false); the rest as everything.
  proxy-only  bodies-off, and server.access_log = false. Usage, cost, the spool and metrics
              stay on (they have no switch).
  governed    everything, plus a budget and a rate limit on the benchmark key (high enough
              never to refuse): every request reserves its worst case and settles.

--peers LITELLM (what `make bench-peers` passes): instead of the rows above, the same mock,
wrk, pinning and cells through Steward and LiteLLM's proxy, alternating Steward, LiteLLM,
Steward, LiteLLM... for each cell (--rounds pairs), with the median of each and the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steward import __version__  # noqa: E402
from steward.records.spool import read_records  # noqa: E402
from tests.support.daemon import Daemon, cli, free_port, init_home  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parent
BODY = ('{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the benchmark"}]'
        '%s}')
JSON_BODY = BODY % ""
SSE_BODY = BODY % ',"stream":true,"stream_options":{"include_usage":true}'
CONFIGS: dict[str, dict[str, str]] = {
    "everything": {},
    "bodies-off": {"STEWARD_BODIES__ENABLED": "false"},
    "proxy-only": {"STEWARD_BODIES__ENABLED": "false", "STEWARD_SERVER__ACCESS_LOG": "false"},
    "governed": {},
}
GOVERNED = {"governed"}  # configurations that put a budget and a rate limit on the key
SHOWN_KEYS = ("bodies.enabled", "bodies.url", "bodies.fsync", "metadata.fsync",
              "server.log_format", "server.access_log")
# LiteLLM's proxy, configured as lightly as it allows: one model entry pointing at the mock as
# an OpenAI-compatible base URL; a master key (it refuses to start without one; with no database
# the check is a comparison in memory, as Steward's key lookup is); no database (DATABASE_URL
# unset), no callbacks, spend logs off, its logging at ERROR, the cost map bundled with it (no
# fetch at start-up). Its telemetry records nothing until a destination is chosen; none is.
LITELLM_CONFIG = """\
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_base: {base}
      api_key: sk-bench
general_settings:
  master_key: {master_key}
  disable_spend_logs: true
"""
LITELLM_ENV = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


# ---------------------------------------------------------------------------------------------
# The machine


@dataclass(frozen=True)
class Layout:
    """Which cores run what. On 2 cores: the mock, wrk and the stream client on the first, one
    worker on the second; two workers float over both, sharing them with the load."""

    load: str
    one: str
    two: str
    two_note: str

    @staticmethod
    def pick() -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 4:
            return Layout(f"{cpus[0]},{cpus[1]}", str(cpus[2]), f"{cpus[2]},{cpus[3]}",
                          f"two workers on cores {cpus[2]},{cpus[3]}, the load on "
                          f"{cpus[0]},{cpus[1]}: no core shared")
        if len(cpus) >= 2:
            return Layout(str(cpus[0]), str(cpus[1]), f"{cpus[0]},{cpus[1]}",
                          f"two workers over cores {cpus[0]},{cpus[1]}, sharing core "
                          f"{cpus[0]} with the mock and wrk")
        return Layout(str(cpus[0]), str(cpus[0]), str(cpus[0]),
                      "one core: workers, mock and wrk all share it")

    def describe(self) -> str:
        return (f"one worker pinned to core {self.one}; the mock upstream, wrk and the stream "
                f"client pinned to core(s) {self.load}; {self.two_note}")


def machine(usable: int) -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_line = (wrk_version.stdout + wrk_version.stderr).splitlines()[:1] or ["wrk ?"]
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"machine: {model}; {os.cpu_count()} cores "
        f"({usable} usable); "
        f"{int(mem.group(1)) // 1024 if mem else '?'} MB RAM; kernel {platform.release()}; "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.2f} at start",
        f"commit: {commit}{' (with uncommitted changes)' if dirty.strip() else ''}; "
        f"steward {__version__}; {wrk_line[0].split(' [')[0]}",
    ]


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (Debian package)...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True,
                       capture_output=True)
    return shutil.which("wrk") or "wrk"


# ---------------------------------------------------------------------------------------------
# Processes: CPU and memory from /proc


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


def workers(target: Target) -> list[int]:
    """The worker processes of a several-worker Steward (spawned by multiprocessing)."""
    found = []
    for pid in target.pids():
        try:
            if (b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                    and Path(f"/proc/{pid}/comm").read_bytes().strip() != b"steward-bodies"):
                found.append(pid)
        except OSError:
            continue
    return found


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmRSS:\s+(\d+)", status)
    return int(match.group(1)) / 1024 if match else 0.0


# ---------------------------------------------------------------------------------------------
# What is measured


@dataclass
class Target:
    """Something to send chat completions to: the mock itself, Steward or a peer."""

    name: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    root: int | None = None  # the server's main pid, for CPU and RSS; None for the mock
    records: Path | None = None  # Steward's spool, to read ttft_ms from its records
    admin: str | None = None  # Steward's admin URL: /readyz says when bodies are all stored

    def pids(self) -> list[int]:
        return tree(self.root) if self.root is not None else []

    def rss(self) -> float:
        """Largest resident set among the server's processes, in MB."""
        return max((rss_mb(p) for p in self.pids()), default=0.0)


@dataclass
class Cell:
    rps: float
    requests: int
    p50: float
    p99: float
    cpu_ms: float  # per request; NaN for the mock
    errors: str


def to_ms(text: str) -> float:
    """wrk's '512.00us' / '1.20ms' / '2.00s'; NaN when it printed something else."""
    match = re.match(r"([\d.]+)(us|ms|s)$", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


class Bench:
    def __init__(self, layout: Layout, duration: float, tmp: Path):
        self.layout, self.duration, self.tmp = layout, duration, tmp
        self.log: list[str] = []

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.append(line)

    def script(self, target: Target, stream: bool, tag: str | None) -> Path:
        path = self.tmp / f"{target.name}-{stream}-{tag}.lua".replace(" ", "_")
        lines = ['wrk.method = "POST"', f"wrk.body = '{SSE_BODY if stream else JSON_BODY}'",
                 'wrk.headers["Content-Type"] = "application/json"',
                 'wrk.headers["Authorization"] = "Bearer sk-bench"']
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in target.headers.items()]
        if tag and target.records is not None:
            lines.append(f'wrk.headers["X-Majordomo-Bench"] = "{tag}"')
        path.write_text("\n".join(lines) + "\n")
        return path

    def wrk(self, target: Target, stream: bool, connections: int, tag: str | None = None,
            duration: float | None = None) -> Cell:
        """One wrk run against the target, with the CPU its processes used meanwhile."""
        lua = self.script(target, stream, tag)
        pids = target.pids()
        before = cpu_seconds(pids)
        result = subprocess.run(
            ["taskset", "-c", self.layout.load, "wrk", "-t", "1", "-c", str(connections),
             "-d", f"{max(1, round(duration or self.duration))}s",  # wrk takes whole seconds
             "--timeout", "10s", "--latency",
             "-s", str(lua), f"http://127.0.0.1:{target.port}/v1/chat/completions"],
            capture_output=True, text=True, check=True)
        settled(target)  # the body writer's CPU for this cell's bodies counts in it
        cpu = cpu_seconds(pids) - before
        text = result.stdout

        def find(pattern: str) -> str:
            match = re.search(pattern, text, re.MULTILINE)
            if match is None:
                raise RuntimeError(f"unexpected wrk output:\n{text}{result.stderr}")
            return match.group(1)

        requests = int(find(r"(\d+) requests in"))
        errors = []
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        if non2xx:
            errors.append(f"{non2xx.group(1)} non-2xx")
        sockets = re.search(r"Socket errors: (.*)", text)
        if sockets:
            errors.append(f"socket errors ({sockets.group(1).strip()})")
        if not requests:  # nothing finished within the cell (a slow server, a short cell)
            errors.append("no request completed")
        nan = float("nan")
        return Cell(float(find(r"Requests/sec:\s+([\d.]+)")), requests,
                    to_ms(find(r"^\s*50%\s+(\S+)")) if requests else nan,
                    to_ms(find(r"^\s*99%\s+(\S+)")) if requests else nan,
                    cpu * 1000 / requests if pids and requests else float("nan"),
                    "; ".join(errors))

    def cell(self, target: Target, stream: bool, connections: int,
             tag: str | None = None) -> Cell:
        got = self.wrk(target, stream, connections, tag)
        cpu = "" if got.cpu_ms != got.cpu_ms else f"  CPU {got.cpu_ms:.2f} ms/req"
        self.say(f"  {target.name:<24} {'SSE ' if stream else 'JSON'} c={connections:<3} "
                 f"{got.rps:>9,.0f}/s  p50 {got.p50:.3f} ms  p99 {got.p99:.3f} ms{cpu}"
                 f"{'  ERRORS: ' + got.errors if got.errors else ''}")
        return got

    def warm(self, target: Target) -> None:
        """A short load first, so start-up (imports, pools, JIT-less caches) is not measured."""
        warm = min(1.0, self.duration)
        self.wrk(target, False, 16, "warm-up", warm)
        self.wrk(target, True, 16, "warm-up", warm)

    def ttfb(self, target: Target) -> float:
        """Median ms from sending a stream request to its first event, one connection."""
        samples = stream_timings(target, max(40, int(self.duration * 40)))
        value = statistics.median(samples[10:])
        self.say(f"  {target.name:<24} SSE c=1   time to first event {value:.3f} ms "
                 f"(median of {len(samples) - 10})")
        return value

    def ttft(self, target: Target, tag: str, expected: int) -> float:
        """Median ttft_ms of the records Steward wrote for one tagged cell."""
        assert target.records is not None
        found = [r for r in read_records(target.records) if r["tags"].get("bench") == tag
                 and r.get("status") == 200 and r.get("ttft_ms") is not None]
        value = statistics.median(r["ttft_ms"] for r in found) if found else float("nan")
        self.say(f"  {target.name:<24} records for {tag}: {len(found):,} (wrk counted "
                 f"{expected:,} completed), median ttft_ms {value:.2f}")
        return value


def settled(target: Target, timeout: float = 30.0) -> None:
    """Wait until the body writer has stored every body journaled so far (Steward only)."""
    if target.admin is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(target.admin + "/readyz", timeout=5) as answer:
                bodies = json.loads(answer.read()).get("bodies", {})
        except (OSError, ValueError):
            return
        if not bodies.get("journal_backlog_bytes") and not bodies.get("queued"):
            return
        time.sleep(0.05)


def stream_timings(target: Target, n: int) -> list[float]:
    """Send n stream requests one after another on one keep-alive connection and time each to
    its first SSE event; each stream is read to its end before the next is sent."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {
        "Host": f"127.0.0.1:{target.port}", "Content-Type": "application/json",
        "Authorization": "Bearer sk-bench", **target.headers,
        "Content-Length": str(len(SSE_BODY))}.items())
    request = f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n{SSE_BODY}".encode()
    samples = []
    with socket.create_connection(("127.0.0.1", target.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            buffer = b""
            first = None
            start = time.perf_counter()
            sock.sendall(request)
            while True:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"{target.name} closed the stream: {buffer[:300]!r}")
                buffer += data
                if first is None and b"data:" in buffer:
                    first = time.perf_counter()
                    if not buffer.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"{target.name} answered {buffer[:300]!r}")
                if b"[DONE]" in buffer and buffer.endswith(b"0\r\n\r\n"):
                    break
            assert first is not None
            samples.append((first - start) * 1000)
    return samples


# ---------------------------------------------------------------------------------------------
# Servers


@contextmanager
def mock_upstream(layout: Layout) -> Iterator[Target]:
    port = free_port()
    process = subprocess.Popen(["taskset", "-c", layout.load, sys.executable,
                                str(HERE / "upstream.py"), str(port)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield Target("mock upstream direct", port)
    finally:
        process.terminate()
        process.wait()


@contextmanager
def steward(config: str, home: Path, key: str, upstream: Target, cpus: str,
            workers: int = 1) -> Iterator[Target]:
    env = {"STEWARD_PROVIDERS__OPENAI__BASE_URL": f"http://127.0.0.1:{upstream.port}/v1",
           **CONFIGS[config]}
    prefix: tuple[str, ...] = ("taskset", "-c", cpus)
    govern(home, config in GOVERNED)
    daemon = Daemon(home, env=env, prefix=prefix,
                    args=("--workers", str(workers)) if workers > 1 else (),
                    log_file=home / f"daemon-{config}-{workers}w.log").start()
    try:
        assert daemon.process is not None
        yield Target(f"steward {config}" + (f" {workers}w" if workers > 1 else ""), daemon.port,
                     {"X-Majordomo-Key": key}, daemon.process.pid, home / "spool",
                     daemon.admin_url)
    finally:
        daemon.stop()


def govern(home: Path, on: bool) -> None:
    """A budget and limits on every key of the bench home, far above what a run can use."""
    scopes = [f"key:{k['id']}" for k in json.loads(cli("keys", "list", "--json",
                                                       home=home).stdout)]
    for scope in scopes:
        if on:
            cli("budgets", "set", scope, "1000000", "--per", "month", home=home)
            cli("limits", "set", scope, "--rpm", "100000000", "--tpm", "1000000000000",
                home=home)
        else:
            cli("budgets", "remove", scope, home=home, check=False)
            cli("limits", "remove", scope, home=home, check=False)


def effective(home: Path, config: str, upstream: Target) -> str:
    env = {"STEWARD_PROVIDERS__OPENAI__BASE_URL": f"http://127.0.0.1:{upstream.port}/v1",
           **CONFIGS[config]}
    data = json.loads(cli("config", "show", "--json", home=home, env=env).stdout)
    shown = []
    for dotted in SHOWN_KEYS:
        section, name = dotted.split(".")
        shown.append(f"{dotted}={data.get(section, {}).get(name)!r}")
    if config in GOVERNED:
        shown.append("a budget and RPM/TPM limits on the key")
    return f"{config}: {', '.join(shown)}"


@contextmanager
def litellm(executable: str, upstream: Target, cpus: str, tmp: Path) -> Iterator[Target]:
    config = tmp / "litellm.yaml"
    master_key = "sk-" + secrets.token_hex(32)
    config.write_text(LITELLM_CONFIG.format(base=f"http://127.0.0.1:{upstream.port}/v1",
                                            master_key=master_key))
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "OPENAI_API_KEY", "LITELLM_MASTER_KEY")}
    log = (tmp / "litellm.log").open("ab")
    process = subprocess.Popen(["taskset", "-c", cpus, executable, "--config", str(config),
                                "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"],
                               env={**env, **LITELLM_ENV}, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = wait_for(lambda: process.poll() is not None
                           or answers(port, "/health/liveliness"), 180)
        if not started or process.poll() is not None:
            raise RuntimeError("LiteLLM did not start; the end of its log:\n"
                               + (tmp / "litellm.log").read_text(errors="replace")[-3000:])
        yield Target("litellm", port, {"Authorization": f"Bearer {master_key}"}, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def bare_proxy(upstream: Target, cpus: str) -> Iterator[Target]:
    """bench/bare_proxy.py: the server stack alone, forwarding to the mock (the floor)."""
    port = free_port()
    process = subprocess.Popen(["taskset", "-c", cpus, sys.executable, str(HERE / "bare_proxy.py"),
                                str(port), f"http://127.0.0.1:{upstream.port}"],
                               stdout=subprocess.DEVNULL)
    try:
        if not wait_for(lambda: listening(port), 30):
            raise RuntimeError("bench/bare_proxy.py did not start")
        yield Target("bare Hypercorn + aiohttp proxy", port, {}, process.pid)
    finally:
        process.terminate()
        process.wait()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll until the condition holds (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def chat_status(target: Target) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=JSON_BODY,
                 headers={"Content-Type": "application/json",
                          "Authorization": "Bearer sk-bench", **target.headers})
    response = conn.getresponse()
    body = response.read().decode(errors="replace")
    conn.close()
    return response.status, body


# ---------------------------------------------------------------------------------------------
# Output


def fmt(value: float, digits: int = 0, unit: str = "") -> str:
    if value != value:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def added(value: float, base: float, digits: int = 2) -> str:
    return f"{fmt(value, digits)} ms (+{fmt(value - base, digits)})"


def times(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a > 0 and b > 0 else "—"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


# ---------------------------------------------------------------------------------------------
# The two runs


@dataclass
class Direct:
    json1: Cell
    json16: Cell
    json64: Cell
    sse1: Cell
    sse64: Cell
    ttfb: float


def measure_direct(bench: Bench, mock: Target) -> Direct:
    bench.say("mock upstream, called directly:")
    bench.warm(mock)
    return Direct(bench.cell(mock, False, 1), bench.cell(mock, False, 16),
                  bench.cell(mock, False, 64), bench.cell(mock, True, 1),
                  bench.cell(mock, True, 64), bench.ttfb(mock))


def run_configs(bench: Bench, configs: list[str], mock: Target, home: Path,
                key: str) -> list[str]:
    direct = measure_direct(bench, mock)
    json_rows = [["mock upstream direct", fmt(direct.json1.rps), fmt(direct.json16.rps),
                  fmt(direct.json64.rps), f"{fmt(direct.json1.p50, 3)} ms", "—", "—"]]
    sse_rows = [["mock upstream direct", f"{fmt(direct.ttfb, 3)} ms", fmt(direct.sse64.rps),
                 "—", "—", "—"]]
    two_rows = []
    bench.say(f"the stack alone (bench/bare_proxy.py), one worker on core {bench.layout.one}:")
    with bare_proxy(mock, bench.layout.one) as bare:
        bench.warm(bare)
        b1, b16, b64 = (bench.cell(bare, False, c) for c in (1, 16, 64))
        b_sse, b_ttfb = bench.cell(bare, True, 64), bench.ttfb(bare)
    json_rows.append(["bare Hypercorn + aiohttp proxy (no Steward)", fmt(b1.rps), fmt(b16.rps),
                      fmt(b64.rps), added(b1.p50, direct.json1.p50, 3), fmt(b16.cpu_ms, 2),
                      "—"])
    sse_rows.append(["bare Hypercorn + aiohttp proxy (no Steward)", added(b_ttfb, direct.ttfb, 3),
                     fmt(b_sse.rps), fmt(b_sse.cpu_ms, 2), "—", "—"])
    for config in configs:
        bench.say(f"{config}, one worker on core {bench.layout.one}:")
        with steward(config, home, key, mock, bench.layout.one) as one:
            bench.warm(one)
            j1, j16, j64 = (bench.cell(one, False, c) for c in (1, 16, 64))
            s1 = bench.cell(one, True, 1, f"{config}-sse-c1")
            ttft1 = bench.ttft(one, f"{config}-sse-c1", s1.requests)
            s16 = bench.cell(one, True, 16, f"{config}-sse-c16")
            ttft16 = bench.ttft(one, f"{config}-sse-c16", s16.requests)
            s64 = bench.cell(one, True, 64)
            ttfb = bench.ttfb(one)
            rss = one.rss()
            bench.say(f"  RSS after these cells: {rss:.0f} MB")
        json_rows.append([f"Steward, {config}", fmt(j1.rps), fmt(j16.rps), fmt(j64.rps),
                          added(j1.p50, direct.json1.p50, 3), fmt(j16.cpu_ms, 2),
                          f"{rss:.0f} MB"])
        sse_rows.append([f"Steward, {config}", added(ttfb, direct.ttfb, 3), fmt(s64.rps),
                         fmt(s64.cpu_ms, 2), f"{fmt(ttft1, 2)} → {fmt(ttft16, 2)} ms",
                         f"{fmt(s16.rps)}"])
        bench.say(f"{config}, two workers ({bench.layout.two_note}):")
        with steward(config, home, key, mock, bench.layout.two, workers=2) as two:
            bench.warm(two)
            t16, t64 = bench.cell(two, False, 16), bench.cell(two, False, 64)
            t_sse = bench.cell(two, True, 64)
            each = "/".join(f"{rss_mb(p):.0f}" for p in workers(two)) or f"{two.rss():.0f}"
        two_rows.append([f"Steward, {config}", fmt(t16.rps), fmt(t64.rps),
                         times(t64.rps, j64.rps), fmt(t_sse.rps), times(t_sse.rps, s64.rps),
                         f"{each} MB"])
    return [
        "JSON chat completions, one worker on one core (CPU per request at c=16; p50 added "
        "over calling the mock directly):", "",
        *table(["", "req/s c=1", "req/s c=16", "req/s c=64", "p50 c=1 (added)",
                "CPU ms/req", "RSS"], json_rows), "",
        "SSE chat streams (23 events ~1 ms apart, include_usage; called directly, one stream "
        f"lasts {fmt(direct.sse1.p50, 1)} ms at p50), one worker on one core: time to the first "
        "event for one caller, streams/s and CPU per stream at 64 connections, the records' "
        "median ttft_ms at 1 and at 16 connections:", "",
        *table(["", "first event c=1 (added)", "streams/s c=64", "CPU ms/stream",
                "record ttft_ms c=1 → c=16", "streams/s c=16"], sse_rows), "",
        f"Two workers ({bench.layout.two_note}):", "",
        *table(["", "req/s c=16", "req/s c=64", "× one worker (c=64)", "streams/s c=64",
                "× one worker", "RSS per worker"], two_rows),
    ]


def run_peers(bench: Bench, litellm_bin: str, config: str, rounds: int, mock: Target,
              home: Path, key: str) -> list[str]:
    version = subprocess.run([str(Path(litellm_bin).with_name("python")), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True).stdout.strip() or "?"
    peer_name = f"LiteLLM proxy {version}"
    bench.say(f"peers: Steward ({config}) and {peer_name}, both pinned to core "
              f"{bench.layout.one} (one of the two idle while the other is measured), "
              f"{rounds} rounds, alternating for each cell")
    direct = measure_direct(bench, mock)
    with steward(config, home, key, mock, bench.layout.one) as ours, \
            litellm(litellm_bin, mock, bench.layout.one, bench.tmp) as peer:
        for target in (ours, peer):
            status, body = chat_status(target)
            bench.say(f"  check: a chat completion through {target.name}: HTTP {status}")
            if status != 200:
                raise RuntimeError(f"{target.name} answered {status}: {body[:500]}")
            bench.warm(target)
        results: dict[str, dict[str, list[float]]] = {ours.name: {}, peer.name: {}}

        def record(target: Target, what: str, value: float) -> None:
            results[target.name].setdefault(what, []).append(value)

        for stream, connections in ((False, 1), (False, 16), (True, 64)):
            for _ in range(rounds):
                for target in (ours, peer):
                    got = bench.cell(target, stream, connections)
                    kind = "sse" if stream else "json"
                    record(target, f"{kind}{connections}", got.rps)
                    record(target, f"{kind}{connections}-cpu", got.cpu_ms)
                    if connections == 1:
                        record(target, "p50", got.p50)
        for _ in range(rounds):
            for target in (ours, peer):
                record(target, "ttfb", bench.ttfb(target))
        rss = {ours.name: ours.rss(), peer.name: peer.rss()}

    def med(target: Target, what: str) -> float:
        return statistics.median(results[target.name][what])

    rows = [["mock upstream direct", fmt(direct.json1.rps), fmt(direct.json16.rps),
             f"{fmt(direct.json1.p50, 3)} ms", f"{fmt(direct.ttfb, 3)} ms",
             fmt(direct.sse64.rps), "—", "—"]]
    for target, name in ((ours, f"Steward {__version__}, {config}"), (peer, peer_name)):
        rows.append([name, fmt(med(target, "json1")), fmt(med(target, "json16")),
                     added(med(target, "p50"), direct.json1.p50, 3),
                     added(med(target, "ttfb"), direct.ttfb, 3), fmt(med(target, "sse64")),
                     fmt(med(target, "sse64-cpu"), 2), f"{rss[target.name]:.0f} MB"])

    def ratio(what: str, higher_is_better: bool = True) -> str:
        a, b = med(ours, what), med(peer, what)
        if not (a > 0 and b > 0):  # zero or NaN: nothing completed on one side
            return "—"
        return f"{(a / b if higher_is_better else b / a):.1f}×"

    rows.append(["Steward ÷ LiteLLM (speed-up)", ratio("json1"), ratio("json16"),
                 ratio("p50", False), ratio("ttfb", False), ratio("sse64"),
                 ratio("sse64-cpu", False), "—"])
    return [
        f"Steward and {peer_name} side by side: same mock, wrk, pinning; medians of {rounds} "
        "alternating rounds per cell (CPU per stream at 64 connections):", "",
        *table(["", "req/s c=1", "req/s c=16", "p50 c=1 (added)", "first event c=1 (added)",
                "streams/s c=64", "CPU ms/stream", "RSS"], rows),
    ]


def run_soak(bench: Bench, config: str, total: int, mock: Target, home: Path,
             key: str) -> list[str]:
    """JSON chat at 16 connections through one pinned worker until `total` requests have been
    answered, in slices of at most 30 s, with the worker's RSS after each slice; then how many
    records the spool holds for them (one per answer, and one per request wrk cut off at the
    end of a slice, which Steward records as the caller going away)."""
    bench.say(f"soak: {total:,} JSON requests through {config}, one worker on core "
              f"{bench.layout.one}, 16 connections")
    done = answered = 0
    series = []
    started = time.monotonic()
    with steward(config, home, key, mock, bench.layout.one) as one:
        bench.warm(one)
        first = one.rss()
        rate = 1000.0
        while done < total:
            slice_s = max(1, min(30, round((total - done) / rate)))
            got = bench.wrk(one, False, 16, "soak", slice_s)
            done += got.requests
            non2xx = re.search(r"(\d+) non-2xx", got.errors)
            answered += got.requests - (int(non2xx.group(1)) if non2xx else 0)
            rate = max(got.rps, 1.0)
            series.append(one.rss())
            bench.say(f"  {done:>10,} requests  {got.rps:>7,.0f}/s  RSS {series[-1]:.0f} MB"
                      f"{'  ERRORS: ' + got.errors if got.errors else ''}")
    records = ok = 0
    for path in sorted((home / "spool").glob("*.ndjson")):
        with path.open("rb") as fh:
            for line in fh:
                if b'"soak"' in line:
                    record = json.loads(line)
                    if record["tags"].get("bench") == "soak":
                        records += 1
                        ok += 200 <= (record.get("status") or 0) < 300
    took = time.monotonic() - started
    bench.say(f"  records tagged soak: {records:,} ({ok:,} with a 2xx status) for {answered:,} "
              f"2xx answers counted by wrk")
    mid = series[len(series) // 2]
    return [
        f"Soak ({config}, one worker, 16 connections, {took:.0f} s):", "",
        *table(["requests", "RSS after warm-up", "RSS half-way", "RSS at the end",
                "records (2xx) / 2xx answers"],
               [[f"{done:,}", f"{first:.0f} MB", f"{mid:.0f} MB", f"{series[-1]:.0f} MB",
                 f"{records:,} ({ok:,}) / {answered:,}"]]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=",".join(CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--duration", type=int,
                        default=int(os.environ.get("BENCH_DURATION", "5")),
                        help="whole seconds per cell (default: $BENCH_DURATION or 5)")
    parser.add_argument("--peers", metavar="LITELLM",
                        help="the litellm executable: compare with LiteLLM's proxy instead")
    parser.add_argument("--rounds", type=int, default=2,
                        help="--peers: Steward/LiteLLM pairs per cell (default 2)")
    parser.add_argument("--soak", type=int, metavar="REQUESTS", default=0,
                        help="after the rows, REQUESTS JSON requests through one worker of "
                             "the first configuration, RSS as they go (e.g. 1000000)")
    parser.add_argument("--output", type=Path, default=HERE / "last-run.md",
                        help="where the markdown goes (default bench/last-run.md)")
    args = parser.parse_args()
    configs = [c.strip() for c in args.config.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.error(f"unknown configuration {', '.join(unknown)}; choose from "
                     f"{', '.join(CONFIGS)}")
    if args.peers and len(configs) != 1:
        configs = ["everything"] if args.config == parser.get_default("config") else configs
        if len(configs) != 1:
            parser.error("--peers compares one configuration; pass --config NAME")

    ensure_wrk()
    started = time.monotonic()
    layout = Layout.pick()
    usable = len(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {int(c) for c in layout.load.split(",")})  # the stream client
    tmp = Path(tempfile.mkdtemp(prefix="steward-bench-"))
    bench = Bench(layout, args.duration, tmp)
    top = [*machine(usable), f"layout: {layout.describe()}",
           f"cells: {args.duration:g} s each with wrk -t1 (after a warm-up of "
           f"{min(1.0, args.duration):g} s per server)"]
    for line in top:
        bench.say(line)
    try:
        home = tmp / "home"
        key = init_home(home)
        with mock_upstream(layout) as mock:
            for config in configs:
                bench.say(f"configuration {effective(home, config, mock)}")
            if args.peers:
                tables = run_peers(bench, args.peers, configs[0], args.rounds, mock, home, key)
            else:
                tables = run_configs(bench, configs, mock, home, key)
            if args.soak:
                tables += ["", *run_soak(bench, configs[0], args.soak, mock, home, key)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    took = f"took {time.monotonic() - started:.0f} s"
    markdown = [*(f"- {line}" for line in top), *(f"- configuration {effective_line}"
                                                 for effective_line in _configs_said(bench)),
                f"- {took}", "", *tables]
    print()
    print("\n".join(markdown))
    args.output.write_text("\n".join(markdown) + "\n")
    print(f"\n(written to {args.output})")


def _configs_said(bench: Bench) -> list[str]:
    return [line.removeprefix("configuration ") for line in bench.log
            if line.startswith("configuration ")]


if __name__ == "__main__":
    main()
