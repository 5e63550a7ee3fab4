"""Memory stays bounded under load: 200 concurrent streams plus a burst of 30 MiB bodies, with
hostile responses (a 100 MiB stream, a gzip bomb, a 32 MiB line) among them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support.bodies import count_bodies
from tests.support.daemon import Daemon, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

STREAMS = 200
BIG_BODIES = 8
BIG = 30 * 1024 * 1024
# At rest a worker is ~80 MB. The burst is 240 MiB of request bytes held at once (each request
# is read whole before it is forwarded, and held once); a stored body is briefly decoded once
# more to check it is JSON, one large body at a time. Measured: ~395 MB peak; ~420 MB with the
# hostile responses in the burst (each alone: see ABOVE_IDLE_MB). A copy per request (joined
# chunks, a whole-body transport buffer) or parallel document builds would cross the ceiling;
# so would memory the allocator keeps after the burst.
RSS_CEILING_MB = 500
# What a worker holds depends on how fast it is scheduled against its peers: with another
# pytest worker loading the cores, a hostile stream measured 53 MB above idle, so `make test`
# runs this file after the parallel tests, by itself, as these ceilings were measured.
pytestmark = pytest.mark.alone


RSS_AFTER_MB = 300  # measured 155-215 MB (570 MB without the allocator tuning)


def vm_mb(pid: int, field: str = "VmHWM") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


HOSTILE = ("big-stream:100", "bomb:256", "endless-line:32")


async def load(daemon: Daemon, key: str) -> tuple[list[int], list[int]]:
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk"}
    limits = httpx.Limits(max_connections=STREAMS + BIG_BODIES + 10)
    async with httpx.AsyncClient(base_url=daemon.url, timeout=120, limits=limits) as client:
        started = asyncio.Event()
        opened = 0

        async def stream() -> int:
            nonlocal opened
            async with client.stream(
                    "POST", "/v1/chat/completions",
                    json={"model": "gpt-4o", "stream": True,
                          "stream_options": {"include_usage": True}},
                    headers={**headers, "x-fake-behavior": "pace:0.4",
                             "X-Majordomo-Case": "stream"}) as response:
                chunks = response.aiter_raw()
                await anext(chunks)
                opened += 1
                if opened == STREAMS:
                    started.set()
                body = b"".join([chunk async for chunk in chunks])
                assert body.rstrip().endswith(b"data: [DONE]")
                return response.status_code

        async def big(i: int) -> int:
            await started.wait()  # the burst lands while every stream is open
            content = f"{i}" * BIG
            response = await client.post(
                "/v1/chat/completions", headers={**headers, "X-Majordomo-Case": "big"},
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
            return response.status_code

        async def hostile(behavior: str) -> int:
            await started.wait()  # during the burst too
            async with client.stream(
                    "POST", "/v1/chat/completions",
                    json={"model": "gpt-4o", "stream": not behavior.startswith("bomb")},
                    headers={**headers, "x-fake-behavior": behavior, "Accept-Encoding": "gzip",
                             "X-Majordomo-Case": "hostile"}) as response:
                async for _ in response.aiter_raw():
                    pass
                return response.status_code

        results = await asyncio.gather(*(stream() for _ in range(STREAMS)),
                                       *(big(i) for i in range(BIG_BODIES)),
                                       *(hostile(b) for b in HOSTILE))
    return list(results[:STREAMS]), list(results[STREAMS:])


def test_200_streams_and_a_burst_of_30_mib_bodies(fresh_home: tuple[Path, str],
                                                  upstream: FakeUpstream) -> None:
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        assert daemon.process is not None
        at_rest = vm_mb(daemon.process.pid)
        streams, bigs = asyncio.run(load(daemon, key))
        assert streams == [200] * STREAMS and bigs == [200] * (BIG_BODIES + len(HOSTILE))
        total = STREAMS + BIG_BODIES + len(HOSTILE)
        records = wait_for(lambda: len(r := daemon.records()) == total and r, 30, "every record")
        assert all(r["input_tokens"] == 25 for r in records if r["tags"]["case"] != "hostile")
        wait_for(lambda: count_bodies(home / "bodies") == total, 120,
                 "every body stored")
        peak = vm_mb(daemon.process.pid)
        after = vm_mb(daemon.process.pid, "VmRSS")
        print(f"worker RSS: {at_rest:.0f} MB at rest, {peak:.0f} MB peak, {after:.0f} MB after")
    finally:
        daemon.stop()
    assert peak < RSS_CEILING_MB, f"peak RSS {peak:.0f} MB (ceiling {RSS_CEILING_MB} MB)"
    assert after < RSS_AFTER_MB, f"RSS after the burst {after:.0f} MB (ceiling {RSS_AFTER_MB})"


# Above the worker's RSS at rest: a capture spills past 8 MiB, so a 100 MiB stream costs about
# 20 MB (it cost ~580 MB held and built whole); a 32 MiB line at most the 16 MiB line cap. A
# bomb costs the metered size, 64 MiB of inflated JSON held to parse (768 MB before the cap).
ABOVE_IDLE_MB = {"big-stream:100": 50, "endless-line:32": 60, "bomb:256": 100}


def test_a_100_mib_stream_an_endless_line_and_a_bomb_with_bodies_on(
        fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    """What one hostile response can cost, bodies stored: none of them is held whole."""
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk", "Accept-Encoding": "gzip"}
    peaks = {}
    try:
        assert daemon.process is not None
        at_rest = vm_mb(daemon.process.pid)
        for behavior in ABOVE_IDLE_MB:  # VmHWM only grows: cheapest first
            stream = not behavior.startswith("bomb")
            with httpx.stream("POST", daemon.url + "/v1/chat/completions", timeout=120,
                              json={"model": "gpt-4o", "stream": stream},
                              headers={**headers, "x-fake-behavior": behavior}) as response:
                size = sum(len(chunk) for chunk in response.iter_raw())
            assert response.status_code == 200 and size > 250_000
            done = len(peaks) + 1
            wait_for(lambda n=done: count_bodies(home / "bodies") == n,
                     120, f"the body of {behavior} stored")
            peaks[behavior] = vm_mb(daemon.process.pid) - at_rest
        print(f"worker RSS at rest {at_rest:.0f} MB; peak above it after each: {peaks}")
    finally:
        daemon.stop()
    for behavior, ceiling in ABOVE_IDLE_MB.items():
        assert peaks[behavior] <= ceiling, f"{behavior}: {peaks}"
