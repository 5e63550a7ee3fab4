"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
daemon that has served known traffic through the SDKs (several keys, models and tags, an
error, streams) beside a spool segment of older records. What the pages show is checked
against the spool's own records, never against the API the pages read.

One daemon and one browser serve the module; the token-and-S3 test starts its own daemon.
A screenshot of each page goes to .artifacts/screenshots/ (and to docs/screenshots/ with
STEWARD_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from steward import db
from steward.dashboard import tokens
from steward.ids import uuid7
from steward.records.record import FIELDS, rfc3339
from steward.secrets import gateway_keys
from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import TEXT_PIECES, FakeUpstream
from tests.support.storage_servers import MotoS3
from tests.support.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"
PROMPT = "Summarise the incident report for the on-call channel in three bullet points."
ANSWER = "".join(TEXT_PIECES)
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
HOUR = 3600
DAY = 86400
RANGES = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY}

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("STEWARD_REQUIRE_BROWSER_TEST") != "1",
    reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium)")


# -- what the pages should show, computed from the spool ---------------------------------------

def dollars(value: Decimal) -> str:
    """The page's money format (dashboard.js money()): cents from a dollar up, 4 decimals
    below, 6 below a cent, trailing zeros past the cents dropped."""
    magnitude = abs(value)
    digits = 2 if magnitude == 0 or magnitude >= 1 else 4 if magnitude >= Decimal("0.01") else 6
    text = f"{value.quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP):,}"
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction[:2] + fraction[2:].rstrip('0')}"


def model(record: dict[str, Any]) -> str:
    """As the dashboard groups (and `steward usage`): the model that answered, else the one
    asked for."""
    return record["response_model"] or record["model"]


def cost(record: dict[str, Any]) -> Decimal:
    return Decimal(record["cost"]) if record["cost"] else Decimal(0)


def is_error(record: dict[str, Any]) -> bool:
    return record["status"] is None or not 200 <= record["status"] < 300


def age(record: dict[str, Any], now: float) -> float:
    return now - calendar.timegm(time.strptime(record["ts"][:19], "%Y-%m-%dT%H:%M:%S"))


def totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    def tokens(name: str) -> int:
        return sum(r[name] or 0 for r in records)
    return {"requests": len(records), "errors": sum(map(is_error, records)),
            "cost": sum(map(cost, records), Decimal(0)),
            **{name: tokens(name) for name in ("input_tokens", "output_tokens",
                                               "cache_read_tokens", "reasoning_tokens")}}


# -- the traffic -------------------------------------------------------------------------------

# provider, model, $ per input and output token, typical latency (ms)
OLD_MODELS = [("openai", "gpt-4o", "0.0000025", "0.00001", 900),
              ("openai", "gpt-4o-mini", "0.00000015", "0.0000006", 450),
              ("anthropic", "claude-haiku-4-5", "0.000001", "0.000005", 700),
              ("gemini", "gemini-2.5-flash", "0.0000003", "0.0000025", 350)]


def old_records(keys: dict[str, str], now: float, count: int = 400) -> list[dict[str, Any]]:
    """Records of earlier traffic, as a gateway that served it would have spooled them:
    spread over 30 days, densest in the last day, never near a range's edge (the 1h range
    holds only this test's own traffic)."""
    rng = random.Random(18)
    teams = {"search": "search", "batch": "ads"}
    out = []
    for _ in range(count):
        spread = rng.random()
        if spread < 0.7:
            ago = rng.uniform(1.5 * HOUR, 23 * HOUR)
        elif spread < 0.9:
            ago = rng.uniform(25 * HOUR, 6.5 * DAY)
        else:
            ago = rng.uniform(7.5 * DAY, 29 * DAY)
        ts = now - ago
        provider, model, in_price, out_price, typical = rng.choice(OLD_MODELS)
        key = rng.choice(["default", "search", "search", "batch"])
        status = rng.choices([200, 429, 500], weights=[30, 2, 1])[0]
        stream = rng.random() < 0.3
        ok = status == 200
        input_tokens = rng.randint(200, 4000) if ok else None
        output_tokens = rng.randint(20, 900) if ok else None
        price = (Decimal(input_tokens) * Decimal(in_price) + Decimal(output_tokens)
                 * Decimal(out_price)) if ok else None
        latency = typical * rng.lognormvariate(0, 0.35)
        tags = {"team": teams[key]} if key in teams else {}
        if rng.random() < 0.5:
            tags["feature"] = rng.choice(["chat", "summaries", "search"])
        record = dict.fromkeys(FIELDS)
        record.update(
            id=str(uuid7(int(ts * 1e9))), ts=rfc3339(ts), node="gw-1", api_key_id=keys[key],
            provider=provider, format=provider, endpoint="chat", method="POST",
            path="/v1/chat/completions", model=model, response_model=model, stream=stream,
            status=status, input_tokens=input_tokens, output_tokens=output_tokens,
            cache_read_tokens=(input_tokens // 4) if ok else None,
            reasoning_tokens=0 if ok else None, latency_ms=round(latency, 1),
            ttft_ms=round(latency / 3, 1) if stream else None, tags=tags,
            error=None if ok else f"upstream answered {status}",
            body_error="bodies are not kept for this traffic",
            cost=str(price) if price is not None else None,
            pricing_status="ok" if ok else "no_usage")
        out.append(record)
    return sorted(out, key=lambda r: r["ts"])


def write_old_segment(home: Path, records: list[dict[str, Any]]) -> None:
    """One finished spool segment, named as the spool names them (time, writer's pid)."""
    spool = home / "spool"
    spool.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - 30 * DAY))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (spool / f"{stamp}-{os.getpid()}-00000a0b1c2.ndjson").write_text(lines)


def send_traffic(daemon: Daemon, keys: dict[str, str]) -> int:
    """Through the SDKs: three keys, three providers, tags, two streams and a 429."""
    def oa(key: str, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller", max_retries=0,
                             default_headers={"X-Majordomo-Key": keys[key],
                                              "X-Majordomo-Feature": "summaries", **headers})
    messages: Any = [{"role": "system", "content": "You write for busy engineers."},
                     {"role": "user", "content": PROMPT}]
    oa("search").chat.completions.create(model="gpt-4o", messages=messages)
    list(oa("search").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream me a haiku."}],
        stream=True, stream_options={"include_usage": True}))
    an = anthropic.Anthropic(base_url=daemon.url, api_key="sk-ant-caller", max_retries=0,
                             default_headers={"X-Majordomo-Key": keys["batch"]})
    an.messages.create(model="claude-haiku-4-5", max_tokens=50,
                       messages=[{"role": "user", "content": "Classify this ticket."}])
    list(an.messages.create(model="claude-haiku-4-5", max_tokens=50, stream=True,
                            messages=[{"role": "user", "content": "Stream a summary."}]))
    ge = genai.Client(api_key="caller-gemini", http_options=genai_types.HttpOptions(
        base_url=daemon.url, headers={"X-Majordomo-Key": keys["default"]}))
    ge.models.generate_content(model="gemini-2.5-flash", contents="Translate: bonjour")
    with pytest.raises(openai.RateLimitError):
        oa("default", **{"x-fake-behavior": "status:429"}).chat.completions.create(
            model="gpt-4o", messages=messages)
    return 6


@dataclass
class Site:
    daemon: Daemon
    keys: dict[str, str]  # name -> key id
    started: float

    @property
    def url(self) -> str:
        return self.daemon.admin_url

    def records(self) -> list[dict[str, Any]]:
        return self.daemon.records()

    def live(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["node"] != "gw-1"]


def indexed(daemon: Daemon, expected: int, headers: dict[str, str] | None = None) -> None:
    """Wait until the dashboard's store holds every spooled record."""
    def count() -> bool:
        answer = httpx.get(daemon.admin_url + "/api/requests", params={"limit": 200},
                           headers=headers or {}).json()
        seen = len(answer["requests"])
        while answer["next"]:
            answer = httpx.get(daemon.admin_url + "/api/requests", headers=headers or {},
                               params={"limit": 200, "cursor": answer["next"]}).json()
            seen += len(answer["requests"])
        return seen == expected
    wait_for(count, 20, f"{expected} records in the dashboard's store")


@pytest.fixture(scope="module")
def site(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("dashboard") / "home"
    secrets = {"default": init_home(home)}
    with contextlib.closing(db.open_home(home)) as conn:  # in-process: a CLI call costs ~2 s
        for name, team in (("search", "search"), ("batch", "ads")):
            secrets[name] = gateway_keys.add_key(conn, name, {"team": team})[1]
        ids = {k.name: k.id for k in gateway_keys.list_keys(conn)}
    now = time.time()
    old = old_records(ids, now)
    write_old_segment(home, old)
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        sent = send_traffic(daemon, secrets)
        wait_for(lambda: len(daemon.records()) == len(old) + sent, 10, "every record spooled")
        indexed(daemon, len(old) + sent)
        yield Site(daemon, ids, now)
    finally:
        daemon.stop()


# -- the browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):  # only reached with STEWARD_REQUIRE_BROWSER_TEST=1
        pytest.fail(f"STEWARD_REQUIRE_BROWSER_TEST=1 but {CHROMIUM} is absent (Debian: chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="light",
                                  locale="en-US", timezone_id="UTC")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    yield opened
    context.close()
    assert not errors, f"the page raised: {errors}"


def screenshot(page: Any, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("STEWARD_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / f"{name}.png")


def ready(page: Any, value: str) -> None:
    """Each page marks <body data-ready> once what it fetched is on screen."""
    page.wait_for_selector(f"body[data-ready={json.dumps(value)}]", timeout=10_000)


def tile(page: Any, metric: str) -> tuple[str, str]:
    """A totals tile's value as the API gave it, and as the page shows it."""
    node = page.locator(f'.tile[data-metric="{metric}"]')
    return node.get_attribute("data-value"), node.locator(".value").inner_text()


def legend(page: Any) -> set[str]:
    """The groups the charts are drawn for."""
    return set(page.locator("#legend .item .name").all_inner_texts())


def top_rows(page: Any, table: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for row in page.locator(f"#{table} tbody tr[data-name]").all():
        cells = row.locator("td").all_inner_texts()
        rows[row.get_attribute("data-name")] = (cells[1], cells[2])
    return rows


def within(site: Site, seconds: float) -> list[dict[str, Any]]:
    now = time.time()
    return [r for r in site.records() if age(r, now) < seconds]


def check_totals(page: Any, records: list[dict[str, Any]]) -> None:
    want = totals(records)
    raw, shown = tile(page, "requests")
    assert (int(raw), shown) == (want["requests"], f"{want['requests']:,}")
    raw, shown = tile(page, "cost")
    assert abs(Decimal(raw) - want["cost"]) < Decimal("1e-9"), (raw, want["cost"])
    assert shown == dollars(want["cost"])
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens"):
        raw, shown = tile(page, name)
        assert (int(raw), shown) == (want[name], f"{want[name]:,}"), name
    raw, shown = tile(page, "error_rate")
    assert float(raw) == pytest.approx(want["errors"] / want["requests"], abs=1e-6)
    assert shown.endswith("%")
    for latency in ("latency_p50_ms", "latency_p95_ms"):
        assert re.fullmatch(r"[\d,.]+ (ms|s)", tile(page, latency)[1]), latency


# -- the tests ---------------------------------------------------------------------------------

def test_overview_totals_equal_the_records_sums(site: Site, page: Any) -> None:
    page.goto(site.url + "/")
    ready(page, "24h|model")
    records = within(site, DAY)
    check_totals(page, records)
    assert tile(page, "ttft_p50_ms")[1].endswith(("ms", " s"))  # streams were sent
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_model.setdefault(model(r), []).append(r)
    assert legend(page) == set(by_model)
    assert top_rows(page, "top-models") == {
        name: (f"{len(rs):,}", dollars(sum(map(cost, rs), Decimal(0))))
        for name, rs in by_model.items()}
    # Hovering a chart shows that point's values: here the newest, this test's traffic.
    over = page.locator('.chart[data-chart="requests"] .u-over')
    box = over.bounding_box()
    over.hover(position={"x": box["width"] * (1 - 0.5 / 96), "y": box["height"] * 0.6})
    assert page.locator('.chart[data-chart="requests"] .tip .tip-time').is_visible()
    screenshot(page, "overview")


def test_grouping_and_range_change_the_numbers(site: Site, page: Any) -> None:
    page.goto(site.url + "/?range=24h&group=model")
    ready(page, "24h|model")
    page.select_option("#group", "key")
    ready(page, "24h|key")
    names = {key_id: name for name, key_id in site.keys.items()}
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in within(site, DAY):
        by_key.setdefault(names[r["api_key_id"]], []).append(r)
    assert legend(page) == set(by_key) == {"default", "search", "batch"}
    assert top_rows(page, "top-keys") == {
        key: (f"{len(rs):,}", dollars(sum(map(cost, rs), Decimal(0))))
        for key, rs in by_key.items()}

    page.select_option("#group", "tag:team")  # offered from the tags the records carry
    ready(page, "24h|tag:team")
    assert legend(page) == {"search", "ads", "(untagged)"}

    page.click('#range button[data-range="1h"]')
    ready(page, "1h|tag:team")
    check_totals(page, within(site, HOUR))
    assert int(tile(page, "requests")[0]) == len(site.live()) == 6  # the old records are gone
    page.click('#range button[data-range="7d"]')
    ready(page, "7d|tag:team")
    check_totals(page, within(site, 7 * DAY))
    page.go_back()  # the history has each view
    ready(page, "1h|tag:team")
    page.go_forward()
    ready(page, "7d|tag:team")
    assert len(within(site, HOUR)) < len(within(site, DAY)) < len(within(site, 7 * DAY))

    # The view is in the URL: opened from a link, it is the same view.
    assert "range=7d" in page.url and "group=tag%3Ateam" in page.url
    shown = tile(page, "requests")
    page.goto(page.url)
    ready(page, "7d|tag:team")
    assert tile(page, "requests") == shown
    assert page.locator("#range button[aria-pressed=true]").inner_text() == "7d"


def ids_on_page(page: Any) -> list[str]:
    return page.locator("#requests tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")


def newest_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: r["ts"], reverse=True)


def test_filters_narrow_the_request_list_and_pages_follow_the_cursor(site: Site,
                                                                      page: Any) -> None:
    records = site.records()
    page.goto(site.url + "/requests?limit=200")
    ready(page, "limit=200")
    seen: list[str] = []
    for _ in range(len(records) // 200 + 2):  # bounded: a cursor ignored would loop forever
        seen += ids_on_page(page)
        if page.locator("#older").is_disabled():
            break
        before = page.url
        page.click("#older")
        page.wait_for_url(lambda url, before=before: url != before)
        page.wait_for_selector("body[data-ready]:not([data-ready=''])")
    assert len(seen) == len(set(seen)) == len(records)  # every record once, over the pages
    by_id = {r["id"]: r for r in records}
    stamps = [by_id[i]["ts"] for i in seen]
    assert stamps == sorted(stamps, reverse=True)

    page.goto(site.url + "/requests")
    ready(page, "all")
    screenshot(page, "requests", full_page=False)  # the first screenful of 50 rows

    def narrowed(**choices: str) -> set[str]:
        for name, value in choices.items():
            field = page.locator(f'#filters [name="{name}"]')
            if field.evaluate("e => e.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)
        page.click("#filters button[type=submit]")
        page.wait_for_selector("body[data-ready]:not([data-ready=''])")
        return set(ids_on_page(page))

    errors = {r["id"] for r in records if r["status"] and 400 <= r["status"] < 500}
    assert narrowed(status="4xx") == errors and 0 < len(errors) < 50
    assert "status=4xx" in page.url
    ads_now = {r["id"] for r in site.live() if r["tags"].get("team") == "ads"}
    assert narrowed(status="", tag="team=ads", since="1h") == ads_now and len(ads_now) == 2
    page.click("#clear")
    page.wait_for_selector("body[data-ready='all']")
    slowest = sorted(r["latency_ms"] for r in records)[-3]
    assert narrowed(min_latency_ms=str(slowest)) == {r["id"] for r in records
                                                     if r["latency_ms"] >= slowest}
    claude = {r["id"] for r in records if model(r) == "claude-haiku-4-5"
              and r["latency_ms"] >= slowest}
    assert narrowed(model="claude-haiku-4-5") == claude


def test_a_request_shows_its_prompt_and_answer_from_the_bucket(site: Site, page: Any) -> None:
    asked = next(r for r in site.live() if r["model"] == "gpt-4o" and r["status"] == 200)
    page.goto(site.url + "/requests")
    ready(page, "all")
    page.click(f'#requests tbody tr[data-id="{asked["id"]}"] a')
    ready(page, asked["id"])
    prompt = page.locator("#prompt .message .text").all_inner_texts()
    assert prompt == ["You write for busy engineers.", PROMPT]
    assert page.locator("#response .text").inner_text() == ANSWER
    assert page.locator('#record tr[data-field="id"] td').inner_text() == asked["id"]
    assert sorted(page.locator('#record tr[data-field="tags"] .chip').all_inner_texts()) == [
        "feature=summaries", "team=search"]
    page.click("#raw-request summary")
    assert json.loads(page.locator("#raw-request pre").inner_text())["messages"][1] == {
        "role": "user", "content": PROMPT}  # the stored request, pretty-printed
    screenshot(page, "request")

    streamed = next(r for r in site.live() if r["model"] == "claude-haiku-4-5" and r["stream"])
    answer = page.goto(f"{site.url}/requests/{streamed['id']}")
    assert answer is not None and answer.headers["cache-control"] == "no-store"
    assert "script-src 'self';" in answer.headers["content-security-policy"]
    ready(page, streamed["id"])
    assert page.locator("#prompt .text").inner_text() == "Stream a summary."
    assert page.locator("#response .role").text_content() == "assistant (streamed)"
    assert page.locator("#response .text").inner_text() == ANSWER

    refused = next(r for r in site.live() if r["status"] == 429)
    page.goto(f"{site.url}/requests/{refused['id']}")
    ready(page, refused["id"])
    assert page.locator("#response .role").text_content() == "error"
    assert page.locator("#response .text").inner_text() == "fake upstream error 429"
    unkept = next(r for r in site.records() if r["body_ref"] is None)
    page.goto(f"{site.url}/requests/{unkept['id']}")
    ready(page, unkept["id"])
    assert page.locator("#prompt").inner_text() == f"Body not available: {unkept['body_error']}"


def test_health_page(site: Site, page: Any) -> None:
    page.goto(site.url + "/health")
    ready(page, "health")
    assert page.locator(".banner").inner_text().startswith("Ready")
    sections = page.locator("#health [data-section]").evaluate_all(
        "cards => cards.map(c => c.dataset.section)")
    assert {"spool", "bodies", "pricing", "workers", "budgets"} <= set(sections)
    assert "Destination" in page.locator('[data-section="bodies"]').inner_text()
    screenshot(page, "health")


def test_a_token_is_required_off_loopback_and_bodies_come_from_s3(
        upstream: FakeUpstream, tmp_path: Path, browser: Any) -> None:
    """[dashboard] require_token stands in for a non-loopback listener (the same guard)."""
    home = tmp_path / "home"
    s3 = MotoS3()
    starting = threading.Thread(target=s3.start)  # beside `steward init`: both take seconds
    starting.start()
    key = init_home(home)
    starting.join()
    daemon = None
    try:
        bucket = s3.client()
        bucket.create_bucket(Bucket="llm-bodies")
        cli("bucket", "set", "s3://llm-bodies/steward", "--endpoint-url", s3.url, "--region",
            "us-east-1", "--access-key-id", "AKIAFAKE", home=home, input="fake-secret\n")
        with contextlib.closing(db.open_home(home)) as conn:
            token = tokens.create(conn, "browser")[1]
        daemon = Daemon(home, env={**provider_env(upstream.url),
                                   "STEWARD_DASHBOARD__REQUIRE_TOKEN": "true"}).start()
        client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller", max_retries=0,
                               default_headers={"X-Majordomo-Key": key,
                                                "X-Majordomo-Note": HOSTILE})
        client.chat.completions.create(model="gpt-4o", messages=[
            {"role": "user", "content": f"Is this markup inert? {HOSTILE}"}])
        record = wait_for(daemon.records, 10, "the record")[-1]
        assert record["body_ref"].startswith("s3://llm-bodies/steward/")
        bucket_key = record["body_ref"][len("s3://llm-bodies/"):]
        wait_for(lambda: bucket.list_objects_v2(Bucket="llm-bodies", Prefix=bucket_key)
                 .get("KeyCount"), 15, "the body in S3")
        assert not any((home / "pending-bodies").glob("*"))  # so the page reads it from S3
        indexed(daemon, 1, {"Authorization": f"Bearer {token}"})

        context = browser.new_context(viewport={"width": 1440, "height": 900},
                                      color_scheme="light", locale="en-US", timezone_id="UTC")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
        page.goto(daemon.admin_url + f"/requests/{record['id']}")
        assert page.url == daemon.admin_url + "/login"  # redirected, nothing shown
        assert page.locator(".tile, #record").count() == 0
        # Styled without /static/ (which needs the token): the stylesheet is inlined.
        assert page.locator("form.card").evaluate("e => getComputedStyle(e).borderRadius") \
            == "10px"
        screenshot(page, "login")

        page.fill("input[name=token]", "not-" + token)
        with page.expect_response(lambda r: r.url.endswith("/login")
                                  and r.request.method == "POST") as posted:
            page.click("button[type=submit]")
        assert posted.value.status == 401
        assert "not valid" in page.locator("#login-error").inner_text()
        assert httpx.get(daemon.admin_url + "/api/overview").status_code == 401

        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_url(daemon.admin_url + "/")
        ready(page, "24h|model")
        assert tile(page, "requests")[0] == "1"

        page.goto(daemon.admin_url + f"/requests/{record['id']}")
        ready(page, record["id"])
        assert page.locator("#prompt .text").inner_text() == f"Is this markup inert? {HOSTILE}"
        assert page.locator('#record tr[data-field="tags"] .chip').all_inner_texts() == [
            f"note={HOSTILE}"]
        page.goto(daemon.admin_url + "/requests")
        ready(page, "all")
        assert page.locator("#requests tbody .chip").first.inner_text() == f"note={HOSTILE}"
        assert page.evaluate("window.__xss") is None  # shown as text, never run
        context.close()
        assert not errors, f"the page raised: {errors}"
    finally:
        if daemon is not None:
            daemon.stop()
        s3.stop()
