"""The dashboard's JSON API against a real daemon: known traffic from the official SDKs (several
keys, models, tags, an error, streams), then every figure checked against the spool's records.

One daemon for the module, with [dashboard] require_token on (as off loopback), so every call
carries an admin token and the guard is tested on the same listener.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from steward import db
from steward.dashboard import tokens
from steward.dashboard.store import rebuild
from steward.home import Home
from steward.ids import uuid7
from steward.records.record import FIELDS, rfc3339
from steward.secrets import gateway_keys
from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import TEXT_PIECES, FakeUpstream
from tests.support.waiting import wait_for

PROMPT = "What is the capital of the dashboard?"
HOUR = 3600.0


@pytest.fixture(scope="module")
def site(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("dash") / "home"
    keys = {"default": init_home(home)}
    with contextlib.closing(db.open_home(home)) as conn:  # set-up: the library, not 3 CLIs
        for name, team in (("alpha", "search"), ("beta", "ads")):
            keys[name] = gateway_keys.add_key(conn, name, {"team": team})[1]
        token = tokens.create(conn, "ops")[1]
        key_ids = {k.name: k.id for k in gateway_keys.list_keys(conn)}
    daemon = Daemon(home, env={**provider_env(upstream.url),
                               "STEWARD_DASHBOARD__REQUIRE_TOKEN": "true"}).start()
    try:
        _traffic(daemon, keys)
        yield {"daemon": daemon, "home": home, "keys": keys, "token": token, "ids": key_ids}
    finally:
        daemon.stop()


def _traffic(daemon: Daemon, keys: dict[str, str]) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    alpha = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller", max_retries=0,
                          default_headers={"X-Majordomo-Key": keys["alpha"]})
    alpha.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    alpha.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore
                                  extra_headers={"X-Majordomo-Feature": "faq"})
    beta = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller", max_retries=0,
                         default_headers={"X-Majordomo-Key": keys["beta"]})
    stream = beta.chat.completions.create(model="gpt-4o", messages=messages,  # type: ignore
                                          stream=True, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        "".join(TEXT_PIECES)
    with pytest.raises(openai.RateLimitError):
        beta.chat.completions.create(model="gpt-4o", messages=messages,  # type: ignore
                                     extra_headers={"x-fake-behavior": "status:429"})
    claude = anthropic.Anthropic(base_url=daemon.url, api_key="sk-ant-caller", max_retries=0,
                                 default_headers={"X-Majordomo-Key": keys["default"]})
    claude.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=messages)  # type: ignore
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                                messages=messages) as events:  # type: ignore[arg-type]
        assert "".join(events.text_stream) == "".join(TEXT_PIECES)
    gemini = genai.Client(api_key="g-caller", http_options=genai_types.HttpOptions(
        base_url=daemon.url, headers={"X-Majordomo-Key": keys["alpha"]}))
    gemini.models.generate_content(model="gemini-2.0-flash", contents=PROMPT)
    wait_for(lambda: len(daemon.records()) == 7, what="seven records in the spool")


def _api(site: dict[str, Any], path: str, **params: Any) -> Any:
    response = httpx.get(site["daemon"].admin_url + path, params=params, timeout=10,
                         headers={"Authorization": f"Bearer {site['token']}"})
    assert response.headers["cache-control"] == "no-store", path
    assert response.status_code == 200, response.text
    return response.json()


def _all_indexed(site: dict[str, Any]) -> list[dict[str, Any]]:
    records = site["daemon"].records()
    wait_for(lambda: len(_api(site, "/api/requests", limit=200)["requests"]) == len(records),
             what="every spooled record indexed")
    return records


def _sums(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"requests": len(records),
            "errors": sum(1 for r in records if not (r["status"] and 200 <= r["status"] < 300)),
            "cost": sum((Decimal(r["cost"]) for r in records if r["cost"]), Decimal(0)),
            **{name: sum(r[name] or 0 for r in records)
               for name in ("input_tokens", "output_tokens", "cache_read_tokens",
                            "cache_write_tokens", "reasoning_tokens")}}


def _totals(overview: dict[str, Any]) -> dict[str, Any]:
    totals = overview["totals"]
    return {**{k: totals[k] for k in ("requests", "errors", "input_tokens", "output_tokens",
                                      "cache_read_tokens", "cache_write_tokens",
                                      "reasoning_tokens")},
            "cost": Decimal(totals["cost"])}


def test_overview_totals_are_the_records_sums(site: dict[str, Any]) -> None:
    records = _all_indexed(site)
    overview = _api(site, "/api/overview", range="1h", group="model")
    assert _totals(overview) == _sums(records)
    totals = overview["totals"]
    assert totals["errors"] == 1 and totals["error_rate"] == pytest.approx(1 / 7, abs=1e-5)
    latencies = sorted(r["latency_ms"] for r in records)
    assert latencies[0] * 0.8 <= totals["latency_p50_ms"] <= latencies[-1] * 1.25
    assert totals["latency_p50_ms"] <= totals["latency_p95_ms"]
    assert totals["ttft_p50_ms"] is not None  # two streams
    # The series add up to the totals, per group and point.
    series = overview["series"]
    assert len(series["t"]) == 60 and overview["step"] == 60
    assert overview["to"] - overview["from"] == HOUR
    assert sum(sum(g["requests"]) for g in series["groups"]) == 7
    by_model = Counter(r["response_model"] or r["model"] for r in records)
    assert {g["name"]: sum(g["requests"]) for g in series["groups"]} == dict(by_model)
    for group in series["groups"]:
        assert {len(v) for k, v in group.items() if k != "name"} == {60}


def test_grouping_by_key_provider_and_tag(site: dict[str, Any]) -> None:
    records = _all_indexed(site)
    by_key = _api(site, "/api/overview", range="1h", group="key")
    assert {g["name"]: sum(g["requests"]) for g in by_key["series"]["groups"]} == \
        {"alpha": 3, "beta": 2, "default": 2}
    by_provider = _api(site, "/api/overview", range="1h", group="provider")
    assert {g["name"]: sum(g["requests"]) for g in by_provider["series"]["groups"]} == \
        {"openai": 4, "anthropic": 2, "gemini": 1}
    by_team = _api(site, "/api/overview", range="1h", group="tag:team")
    assert {g["name"]: sum(g["requests"]) for g in by_team["series"]["groups"]} == \
        {"search": 3, "ads": 2, "(untagged)": 2}
    by_feature = _api(site, "/api/overview", range="1h", group="tag:feature")
    assert {g["name"]: sum(g["requests"]) for g in by_feature["series"]["groups"]} == \
        {"faq": 1, "(untagged)": 6}
    # The totals do not depend on the grouping; top tables rank by spend.
    assert {json.dumps(o["totals"]) for o in (by_key, by_provider, by_team)} == \
        {json.dumps(by_key["totals"])}
    top = by_key["top"]
    cost_by_key: dict[str, Decimal] = {}
    names = {key_id: name for name, key_id in site["ids"].items()}
    for r in records:
        cost_by_key[names[r["api_key_id"]]] = cost_by_key.get(names[r["api_key_id"]],
                                                              Decimal(0)) + Decimal(r["cost"] or 0)
    assert [k["name"] for k in top["keys"]] == sorted(cost_by_key, key=lambda n: -cost_by_key[n])
    assert {k["name"]: Decimal(k["cost"]) for k in top["keys"]} == cost_by_key
    assert {t["name"] for t in top["tags"]} == {"team=search", "team=ads", "feature=faq"}


def _old_record(key_id: str, age: float, cost: str) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(FIELDS)
    record.update(id=str(uuid7()), ts=rfc3339(time.time() - age), node="elsewhere",
                  api_key_id=key_id, provider="openai", format="openai", method="POST",
                  path="/v1/chat/completions", model="gpt-old", stream=False, status=200,
                  input_tokens=1000, output_tokens=100, latency_ms=900.0, tags={},
                  cost=cost, endpoint="chat/completions")
    return record


def test_range_changes_what_is_counted(site: dict[str, Any]) -> None:
    """Records 3 hours and 10 days old (as another process's finished segment) count in the
    ranges that reach back to them, and in no shorter one."""
    records = _all_indexed(site)
    alpha = site["ids"]["alpha"]
    lines = [_old_record(alpha, 3 * HOUR, "1.5"), _old_record(alpha, 10 * 24 * HOUR, "2.25")]
    segment = site["home"] / "spool" / "20200101T000000-999999-00000abcdef.ndjson"
    segment.write_text("".join(json.dumps(r) + "\n" for r in lines))
    try:
        wait_for(lambda: _api(site, "/api/overview", range="30d")["totals"]["requests"] == 9,
                 what="the old records indexed")
        figures = {name: _api(site, "/api/overview", range=name, group="model")
                   for name in ("1h", "24h", "7d", "30d")}
        base = _sums(records)["cost"]
        expected = {"1h": (7, base), "24h": (8, base + Decimal("1.5")),
                    "7d": (8, base + Decimal("1.5")), "30d": (9, base + Decimal("3.75"))}
        for name, (count, cost) in expected.items():
            totals = figures[name]["totals"]
            assert (totals["requests"], Decimal(totals["cost"])) == (count, cost), name
        assert [(f["step"], len(f["series"]["t"])) for f in figures.values()] == \
            [(60, 60), (900, 96), (3600, 168), (21600, 120)]
        old = next(g for g in figures["30d"]["series"]["groups"] if g["name"] == "gpt-old")
        assert sum(old["requests"]) == 2 and sum(old["input_tokens"]) == 2000
        assert 900 / 1.25 <= old["latency_p50_ms"][-41] <= 900 * 1.25  # 10 days back
        listed = _api(site, "/api/requests", model="gpt-old")["requests"]
        assert [r["id"] for r in listed] == [r["id"] for r in lines]  # newest first
        bounded = _api(site, "/api/requests", **{"from": time.time() - 5 * HOUR,
                                                 "to": time.time() - HOUR})["requests"]
        assert [r["id"] for r in bounded] == [lines[0]["id"]]
    finally:
        segment.unlink()
        rebuild(Home(site["home"]))  # the other tests' figures again


def test_filters_narrow_the_list(site: dict[str, Any]) -> None:
    records = _all_indexed(site)
    newest_first = sorted(records, key=lambda r: (r["ts"], r["id"]), reverse=True)

    def ids(**params: Any) -> list[str]:
        return [r["id"] for r in _api(site, "/api/requests", **params)["requests"]]

    def expected(keep: Any) -> list[str]:
        return [r["id"] for r in newest_first if keep(r)]

    alpha = site["ids"]["alpha"]
    assert set(ids()) == {r["id"] for r in records}
    assert ids(key="alpha") == expected(lambda r: r["api_key_id"] == alpha)
    assert ids(key=alpha) == ids(key="alpha")
    assert ids(provider="anthropic") == expected(lambda r: r["provider"] == "anthropic")
    assert ids(model="gpt-4o-mini-2024-08-06") == \
        expected(lambda r: r["response_model"] == "gpt-4o-mini-2024-08-06")
    assert ids(status="4xx") == expected(lambda r: r["status"] == 429)
    assert ids(status="429") == ids(status="4xx") and len(ids(status="4xx")) == 1
    assert set(ids(status="2xx")) == {r["id"] for r in records if r["status"] == 200}
    assert ids(tag="team=search") == expected(lambda r: r["tags"].get("team") == "search")
    assert ids(tag="feature=faq", key="alpha") == \
        expected(lambda r: r["tags"].get("feature") == "faq")
    priciest = max(Decimal(r["cost"] or 0) for r in records)
    assert ids(min_cost=str(priciest)) == \
        expected(lambda r: Decimal(r["cost"] or 0) >= priciest)
    slowest = max(r["latency_ms"] for r in records)
    assert ids(min_latency_ms=slowest) == expected(lambda r: r["latency_ms"] >= slowest)
    listed = _api(site, "/api/requests", key="beta")["requests"]
    assert {r["key_name"] for r in listed} == {"beta"}
    # Pages of 2 walk the whole list once, newest first.
    seen: list[str] = []
    cursor = None
    while True:
        page = _api(site, "/api/requests", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [r["id"] for r in page["requests"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in newest_first] or sorted(seen) == sorted(ids())
    assert len(seen) == len(set(seen)) == len(records)
    menus = _api(site, "/api/filters")
    assert menus["keys"] == ["alpha", "beta", "default"]
    assert menus["providers"] == ["anthropic", "gemini", "openai"]
    assert menus["tags"] == {"feature": ["faq"], "team": ["ads", "search"]}


def test_bad_parameters_are_400_json(site: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {site['token']}"}
    for path in ("/api/overview?range=2h", "/api/overview?group=colour",
                 "/api/requests?limit=500", "/api/requests?status=teapot",
                 "/api/requests?cursor=nonsense!", "/api/requests?min_cost=lots",
                 "/api/requests?tag=team"):
        response = httpx.get(site["daemon"].admin_url + path, headers=headers)
        assert response.status_code == 400, path
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert response.headers["cache-control"] == "no-store"
    missing = httpx.get(site["daemon"].admin_url + "/api/requests/nope", headers=headers)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


def test_one_request_and_its_bodies(site: dict[str, Any]) -> None:
    records = _all_indexed(site)
    for record in records:
        got = _api(site, f"/api/requests/{record['id']}")["record"]
        assert {k: v for k, v in got.items() if k != "key_name"} == record
    plain = next(r for r in records if r["model"] == "gpt-4o-mini")
    body = _api(site, f"/api/requests/{plain['id']}/body")
    assert body["available"] and body["error"] is None and not body["stream"]
    assert body["request"]["messages"][0]["content"] == PROMPT
    assert body["response"]["choices"][0]["message"]["content"] == "".join(TEXT_PIECES)
    assert dict(body["request_meta"]["headers"])["authorization"] == "[REDACTED]"
    assert site["keys"]["alpha"] not in json.dumps(body)
    streams = [r for r in records if r["stream"]]
    assert {r["provider"] for r in streams} == {"openai", "anthropic"}
    for record in streams:
        body = _api(site, f"/api/requests/{record['id']}/body")
        assert body["stream"] and body["response_text"] == "".join(TEXT_PIECES), record
        assert PROMPT in json.dumps(body["request"])
    gemini = next(r for r in records if r["provider"] == "gemini")
    body = _api(site, f"/api/requests/{gemini['id']}/body")
    assert PROMPT in json.dumps(body["request"]) and body["response_text"] is None


def test_health(site: dict[str, Any]) -> None:
    _all_indexed(site)
    health = _api(site, "/api/health")
    assert health["ready"] is True and health["degraded"] == []
    assert health["spool"]["upload_enabled"] is False
    assert health["bodies"]["destination"].startswith("file://")
    assert health["pricing"]["version"] and health["pricing"]["source"] == "bundled"
    assert health["dashboard"]["indexing_here"] is True and health["dashboard"]["indexed"] >= 7
    assert health["workers"]["configured"] == 1 and health["budgets"] == []


def test_rebuild_reproduces_the_figures(site: dict[str, Any]) -> None:
    records = _all_indexed(site)
    before = _api(site, "/api/overview", range="24h", group="key")
    result = cli("dashboard", "rebuild", home=site["home"])
    assert result.stdout.strip().startswith(f"dashboard rebuilt: {len(records)} records from 1 ")
    assert _api(site, "/api/overview", range="24h", group="key") == before


def test_a_token_is_required(site: dict[str, Any]) -> None:
    admin = site["daemon"].admin_url
    for path in ("/api/overview", "/api/requests", "/api/filters", "/api/health"):
        refused = httpx.get(admin + path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["type"] == "authentication_error"
        assert refused.headers["cache-control"] == "no-store"
        wrong = httpx.get(admin + path, headers={"Authorization": "Bearer stw_admin_wrong"})
        assert wrong.status_code == 401
    page = httpx.get(admin + "/requests")
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert httpx.get(admin + "/static/app.js").status_code == 303
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(admin + path).status_code == 200, path


def test_login_sets_a_strict_http_only_cookie(site: dict[str, Any]) -> None:
    admin = site["daemon"].admin_url
    wrong = httpx.post(admin + "/login", data={"token": "stw_admin_guess"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    with httpx.Client(base_url=admin) as browser:
        signed_in = browser.post("/login", data={"token": site["token"]})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
        cookie = signed_in.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path"} <= attributes and "samesite=strict" in cookie.lower()
        assert site["token"] not in cookie
        assert browser.get("/api/overview").status_code == 200
        browser.get("/logout")
        assert browser.get("/api/overview").status_code == 401
    forged = httpx.get(admin + "/api/overview",
                       cookies={"steward_session": f"ops.{int(time.time())}.{'0' * 64}"})
    assert forged.status_code == 401


def test_a_revoked_token_and_its_sessions_are_refused(site: dict[str, Any]) -> None:
    admin = site["daemon"].admin_url
    with contextlib.closing(db.open_home(site["home"])) as conn:
        token = tokens.create(conn, "temporary")[1]
    bearer = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: httpx.get(admin + "/api/filters", headers=bearer).status_code == 200,
             what="the new token accepted")
    with httpx.Client(base_url=admin) as browser:
        assert browser.post("/login", data={"token": token}).status_code == 303
        assert browser.get("/api/filters").status_code == 200
        cli("admin", "token", "revoke", "temporary", home=site["home"])
        wait_for(lambda: httpx.get(admin + "/api/filters", headers=bearer).status_code == 401,
                 what="the revoked token refused")
        assert browser.get("/api/filters").status_code == 401
    listed = json.loads(cli("admin", "token", "list", "--json", home=site["home"]).stdout)
    assert {t["name"]: t["status"] for t in listed} == {"ops": "active", "temporary": "revoked"}
    assert token not in (site["home"] / "steward.db").read_bytes().decode("latin-1")
    assert token not in site["daemon"].log()
