"""`make dist` builds one executable file that serves a real SDK request.

Building takes about a minute (pip installs every dependency into the zipapp), so it runs in
CI (.ci/run sets STEWARD_TEST_DIST=1) and on demand, not in every local `make test`.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from importlib.metadata import version
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILES = ("steward/dashboard/static/dashboard.js",
                   "steward/dashboard/static/vendor/uplot-1.6.32/uPlot.iife.min.js",
                   "steward/dashboard/static/vendor/uplot-1.6.32/LICENSE",
                   "steward/dashboard/templates/dashboard/overview.html")
pytestmark = pytest.mark.skipif(os.environ.get("STEWARD_TEST_DIST") != "1",
                                reason="set STEWARD_TEST_DIST=1 to build and test dist/steward")


def test_single_file_executable_serves_a_request(tmp_path: Path,
                                                 upstream: FakeUpstream) -> None:
    build = subprocess.run(["make", "dist"], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert build.returncode == 0, build.stderr[-2000:]
    exe = ROOT / "dist" / "steward"
    assert zipfile.is_zipfile(exe) and os.access(exe, os.X_OK)
    names = zipfile.ZipFile(exe).namelist()
    for shipped in DASHBOARD_FILES:  # package data, not code: easy to leave out
        assert any(name.endswith(shipped) for name in names), shipped
    env = {**provider_env(upstream.url), "SHIV_ROOT": str(tmp_path / "shiv")}
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env={
        **os.environ, **env}, timeout=120)
    assert help_text.returncode == 0 and "init" in help_text.stdout
    shown = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env={
        **os.environ, **env}, timeout=120)
    assert shown.stdout == f"steward {version('steward')}\n", shown.stderr  # metadata shipped
    home = tmp_path / "home"
    key = init_home(home)
    daemon = Daemon(home, env=env, executable=str(exe)).start(timeout=120)
    try:
        client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk", max_retries=0,
                               default_headers={"X-Majordomo-Key": key})
        reply = client.chat.completions.create(model="gpt-4o",
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello from the fake"
        assert daemon.records()[-1]["input_tokens"] == 25
        page = httpx.get(daemon.admin_url + "/")  # the dashboard, from the zipapp
        assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
        chart = httpx.get(daemon.admin_url + "/static/vendor/uplot-1.6.32/uPlot.iife.min.js")
        assert chart.status_code == 200 and "uPlot" in chart.text
    finally:
        assert daemon.stop() == 0
