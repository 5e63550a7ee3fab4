"""`steward run` as a real process on a free loopback port, ready when it says READY=1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steward.records.spool import read_records

STEWARD = str(Path(sys.executable).with_name("steward"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args: str, home: Path | None = None, input: str | None = None,
        env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the steward command the way an operator would."""
    argv = [STEWARD, *args] + (["--home", str(home)] if home is not None else [])
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    result = subprocess.run(argv, capture_output=True, text=True, input=input, env=full_env,
                            timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


def init_home(home: Path) -> str:
    """`steward init`; returns the first gateway key it prints."""
    result = cli("init", home=home)
    return next(line for line in result.stdout.splitlines() if line.startswith("mdm_sk_"))


def provider_env(upstream_url: str) -> dict[str, str]:
    return {
        "STEWARD_PROVIDERS__OPENAI__BASE_URL": upstream_url + "/v1",
        "STEWARD_PROVIDERS__ANTHROPIC__BASE_URL": upstream_url,
        "STEWARD_PROVIDERS__GEMINI__BASE_URL": upstream_url,
        "STEWARD_PROVIDERS__TOGETHER__FORMAT": "openai",
        "STEWARD_PROVIDERS__TOGETHER__BASE_URL": upstream_url + "/together/v1",
    }


@dataclass
class Daemon:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    admin_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()  # e.g. ("taskset", "-c", "1") for the benchmark
    executable: str = STEWARD
    notifications: list[str] = field(default_factory=list)
    senders: list[int] = field(default_factory=list)  # the pid that sent each notification
    warm_log_offset: int = 0
    log_file: Path | None = None  # default: <home>/daemon.log
    notify: socket.socket = field(init=False, repr=False)
    _notify_dir: str = field(init=False, repr=False, default="")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.home / "daemon.log"

    def start(self, timeout: float = 30.0) -> Daemon:
        """Start and wait for READY=1 on a notify socket that stays open until stop()."""
        self.port = free_port()
        self.admin_port = free_port()
        self._notify_dir = tempfile.mkdtemp(prefix="steward-notify-")
        notify_path = os.path.join(self._notify_dir, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # The kernel attaches the sender's pid to each datagram, as it does for systemd, which
        # drops any not from the main pid (NotifyAccess=main).
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.notify.bind(notify_path)
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": notify_path, "PYTHONUNBUFFERED": "1",
               "STEWARD_SERVER__ADMIN_PORT": str(self.admin_port)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, self.executable, "run", "--home", str(self.home),
                 "--port", str(self.port), *self.args],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        if not self.wait_for_notification("READY=1", timeout):
            self.stop()
            raise AssertionError(f"steward did not become ready:\n{self.log()}")
        return self

    def wait_for_notification(self, wanted: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.notify.settimeout(max(deadline - time.monotonic(), 0.001))
                if wanted in self._receive():
                    return True
        except TimeoutError:
            return False

    def drain_notifications(self) -> None:
        """Read what has been sent so far, without waiting."""
        self.notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self._receive()

    def _receive(self) -> str:
        data, ancillary, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("iII", cmsg_data[:12])[0] for level, kind, cmsg_data
                   in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        message = data.decode()
        self.notifications.append(message)
        self.senders.append(pid)
        return message

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        self.process = None
        self.drain_notifications()  # keep what it said on the way out (STOPPING=1)
        self.notify.close()
        shutil.rmtree(self._notify_dir, ignore_errors=True)
        return code

    def workers(self) -> list[int]:
        """Worker process pids (several workers); empty when one process serves."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                and Path(f"/proc/{pid}/comm").read_bytes().strip() != b"steward-bodies"]

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.home / "spool")

    def record_tagged(self, name: str, value: str, timeout: float = 10.0) -> dict[str, Any]:
        """The one record with this tag. Waited for: an SDK reading a stream returns at its
        last event (`[DONE]`), which can come before the response's end, and the record is
        promised only by the end."""
        def tagged() -> list[dict[str, Any]]:
            return [r for r in self.records() if r["tags"].get(name) == value]
        deadline = time.monotonic() + timeout
        while not (found := tagged()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(found) == 1, f"expected one record tagged {name}={value}, got {found}"
        return found[0]
