"""Gateway keys reach inference, not the operator's provider account; a request without a valid
key costs nothing that grows; a gateway key never leaves Steward.

The daemon runs as a real process with stored provider keys, so a request Steward should have
refused would reach the fake provider carrying the operator's key: the tests count what the
provider received.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from steward import db
from steward.proxy.access import LOG_INTERVAL, Refusals
from steward.secrets import gateway_keys
from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

STORED = {"openai": "sk-stored-openai-31c9", "anthropic": "sk-ant-stored-8d02",
          "gemini": "AIza-stored-gemini-77aa"}
INJECTED_AS = {"openai": ("authorization", "Bearer " + STORED["openai"]),
               "anthropic": ("x-api-key", STORED["anthropic"]),
               "gemini": ("x-goog-api-key", STORED["gemini"])}


class Scoped:
    """The running daemon and a key per set of scopes."""

    def __init__(self, daemon: Daemon, keys: dict[str, str]):
        self.daemon, self.keys = daemon, keys

    def send(self, method: str, path: str, key: str | None, *, provider: str | None = None,
             headers: dict[str, str] | None = None, body: Any = None) -> httpx.Response:
        sent = dict(headers or {})
        if key is not None:
            sent["X-Majordomo-Key"] = key
        if provider is not None:
            sent["X-Majordomo-Provider"] = provider
        return httpx.request(method, self.daemon.url + path, headers=sent, timeout=30,
                             json=body if method in ("POST", "PUT", "PATCH") else None)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.daemon.admin_url + "/metrics", timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def scoped(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Scoped]:
    home = tmp_path_factory.mktemp("scopes")
    keys = {"inference": init_home(home)}
    for provider, secret in STORED.items():
        cli("providers", "set", provider, "--api-key-stdin", home=home, input=secret + "\n")
    for name, allow in (("files", "files"), ("admin", "admin"),
                        ("everything", "files,batches,fine_tuning")):
        added = cli("keys", "add", name, "--allow", allow, "--json", home=home)
        keys[name] = json.loads(added.stdout)["key"]
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    yield Scoped(daemon, keys)
    daemon.stop()


def reached(upstream: FakeUpstream, act: Callable[..., httpx.Response], *args: Any,
            **kwargs: Any) -> tuple[httpx.Response, list[Any]]:
    """The response to act(...), and every request the provider received meanwhile."""
    before = len(upstream.requests)
    got = act(*args, **kwargs)
    return got, upstream.requests[before:]


def header(seen: Any, name: str) -> str | None:
    return {k.lower(): v for k, v in seen.headers.items()}.get(name)


# -- Inference reaches the provider with the stored key --------------------------------------

INFERENCE = [  # provider, method, path; detected from the path unless marked "named"
    ("openai", "POST", "/v1/chat/completions"), ("openai", "POST", "/v1/completions"),
    ("openai", "POST", "/v1/responses"), ("openai", "GET", "/v1/responses/resp_1"),
    ("openai", "DELETE", "/v1/responses/resp_1"), ("openai", "POST", "/v1/responses/resp_1/cancel"),
    ("openai", "GET", "/v1/responses/resp_1/input_items"), ("openai", "POST", "/v1/embeddings"),
    ("openai", "GET", "/v1/models"), ("openai", "GET", "/v1/models/gpt-4o"),
    ("openai", "POST", "/v1/moderations"), ("openai", "POST", "/v1/audio/speech"),
    ("openai", "POST", "/v1/audio/transcriptions"), ("openai", "POST", "/v1/audio/translations"),
    ("openai", "POST", "/v1/images/generations"), ("openai", "POST", "/v1/images/edits"),
    ("openai", "POST", "/v1/images/variations"),
    ("anthropic", "POST", "/v1/messages"), ("anthropic", "POST", "/v1/messages/count_tokens"),
    ("anthropic named", "GET", "/v1/models"),
    ("anthropic named", "GET", "/v1/models/claude-sonnet-4-5"),
    *[("gemini", "POST", f"/{v}/models/gemini-2.5-flash:{m}") for v in ("v1beta", "v1")
      for m in ("generateContent", "streamGenerateContent", "countTokens", "embedContent",
                "batchEmbedContents")],
    ("gemini", "GET", "/v1beta/models"), ("gemini", "GET", "/v1beta/models/gemini-2.5-flash"),
    ("gemini named", "GET", "/v1/models"), ("gemini named", "GET", "/v1/models/gemini-2.5-flash"),
]


def test_every_inference_endpoint_reaches_the_provider_with_the_stored_key(
        scoped: Scoped, upstream: FakeUpstream) -> None:
    for provider, method, path in INFERENCE:
        name = provider.split()[0]
        got, seen = reached(upstream, scoped.send, method, path, scoped.keys["inference"],
                            body={"model": "m"},
                            provider=name if provider.endswith("named") else None)
        assert got.status_code != 403, (provider, method, path, got.text)
        assert [(s.method, s.path) for s in seen] == [(method, path)], (provider, method, path)
        credential, value = INJECTED_AS[name]
        assert header(seen[0], credential) == value, (provider, method, path)


# -- Everything else is refused, and the provider hears nothing -------------------------------

REFUSED = [  # provider header (None: detected from the path), method, path, scope
    (None, "DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc123", "admin"),
    (None, "GET", "/v1/organization/users", "admin"),
    ("openai", "GET", "/v1/organization/users", "admin"),
    (None, "GET", "/v1/chat/completions", "admin"),  # stored completions, not inference
    (None, "POST", "/v1/vector_stores", "admin"),
    ("openai", "POST", "/v1/assistants", "admin"),
    (None, "GET", "/v1/files", "files"),
    (None, "POST", "/v1/uploads", "files"),
    (None, "POST", "/v1/batches", "batches"),
    (None, "POST", "/v1/fine_tuning/jobs", "fine_tuning"),
    ("together", "GET", "/v1/files", "files"),
    (None, "POST", "/v1/messages/batches", "batches"),
    (None, "GET", "/v1/messages/batches/msgbatch_1/results", "batches"),
    ("anthropic", "GET", "/v1/files", "files"),
    ("anthropic", "GET", "/v1/organizations/api_keys", "admin"),
    ("anthropic", "DELETE", "/v1/models/claude-x", "admin"),
    (None, "POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent", "batches"),
    (None, "POST", "/upload/v1beta/files", "files"),
    (None, "GET", "/v1beta/files/abc", "files"),
    (None, "POST", "/v1beta/tunedModels", "fine_tuning"),
    (None, "GET", "/v1beta/cachedContents", "admin"),
    (None, "POST", "/v1beta/models/imagen-4:predict", "admin"),
    ("gemini", "DELETE", "/v1beta/models/gemini-2.5-flash", "admin"),
]
SHAPES = {
    "openai": lambda b: b["error"]["type"] == "permission_error",
    "anthropic": lambda b: b["type"] == "error" and b["error"]["type"] == "permission_error",
    "gemini": lambda b: b["error"]["status"] == "PERMISSION_DENIED" and b["error"]["code"] == 403,
}
FORMAT_OF = {"together": "openai"}


@pytest.mark.parametrize(("provider", "method", "path", "scope"), REFUSED,
                         ids=[f"{p or 'detected'} {m} {path}" for p, m, path, _ in REFUSED])
def test_outside_inference_is_403_naming_the_scope_and_nothing_reaches_the_provider(
        scoped: Scoped, upstream: FakeUpstream, provider: str | None, method: str, path: str,
        scope: str) -> None:
    got, seen = reached(upstream, scoped.send, method, path, scoped.keys["inference"],
                        provider=provider, body={"model": "m"})
    assert seen == []  # not a byte, so never the stored key
    assert got.status_code == 403, got.text
    body = got.json()
    expected = "gemini" if "v1beta" in path else "anthropic" if (
        provider == "anthropic" or "/messages" in path) else "openai"
    assert SHAPES[FORMAT_OF.get(expected, expected)](body), body
    message = json.dumps(body)
    assert f"steward keys add NAME --allow {scope}" in message
    record = wait_for(lambda: next((r for r in scoped.daemon.records()
                                    if r["id"] == got.headers["x-majordomo-request-id"]), None),
                      10, "the refusal's record")
    assert record["status"] == 403 and record["api_key_id"].startswith("key_")
    assert record["endpoint"] == (scope if scope != "admin" else "other")


def test_a_key_reaches_exactly_the_scopes_it_was_created_with(
        scoped: Scoped, upstream: FakeUpstream) -> None:
    cases = [  # key, method, path, allowed
        ("files", "GET", "/v1/files", True), ("files", "POST", "/upload/v1beta/files", True),
        ("files", "POST", "/v1/batches", False), ("files", "GET", "/v1/organization/users",
                                                  False),
        ("everything", "POST", "/v1/batches", True),
        ("everything", "POST", "/v1/fine_tuning/jobs", True),
        ("everything", "POST", "/v1/messages/batches", True),
        ("everything", "DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc123", False),
        ("admin", "DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc123", True),
        ("admin", "GET", "/v1/organization/users", True),
        ("admin", "GET", "/v1/files", False),
    ]
    for key, method, path, allowed in cases:
        got, seen = reached(upstream, scoped.send, method, path, scoped.keys[key])
        assert (got.status_code != 403) == allowed, (key, method, path, got.text)
        assert len(seen) == (1 if allowed else 0), (key, method, path)
        if allowed:
            provider = "gemini" if "v1beta" in path else "anthropic" if "/messages" in path \
                else "openai"
            name, value = INJECTED_AS[provider]
            assert header(seen[0], name) == value


def test_keys_add_allow_and_keys_list_show_scopes(scoped: Scoped) -> None:
    home = scoped.daemon.home
    listed = {k["name"]: k["scopes"] for k in json.loads(cli("keys", "list", "--json",
                                                             home=home).stdout)}
    assert listed == {"default": [], "files": ["files"], "admin": ["admin"],
                      "everything": ["batches", "files", "fine_tuning"]}
    table = cli("keys", "list", home=home).stdout
    row = next(line for line in table.splitlines() if " everything " in line)
    assert "inference,batches,files,fine_tuning" in row
    wrong = cli("keys", "add", "x", "--allow", "files,root", home=home, check=False)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().count("\n") == 0
    assert "unknown scope 'root'" in wrong.stderr and "fine_tuning" in wrong.stderr


def test_existing_keys_get_no_scope_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "steward.db"
    old = sqlite3.connect(path)
    for script in db.MIGRATIONS[:3]:  # the schema before scopes
        old.executescript(script)
    old.execute("PRAGMA user_version = 3")
    old.execute("INSERT INTO gateway_keys (id, name, prefix, key_hash, created_at) "
                "VALUES ('key_old', 'old', 'mdm_sk_abcde', 'h', 0)")
    old.commit()
    old.close()
    conn = db.connect(path)
    (key,) = gateway_keys.list_keys(conn)
    assert key.name == "old" and key.scopes == frozenset()
    assert gateway_keys.load_hashes(conn)["h"].scopes == frozenset()


# -- Without a valid key: no record, no series, one counter, few log lines --------------------

def test_requests_without_a_valid_key_leave_no_record_and_no_series(
        scoped: Scoped, upstream: FakeUpstream) -> None:
    daemon = scoped.daemon
    records = len(daemon.records())
    before = scoped.metrics()
    log_start = daemon.log_path.stat().st_size
    sent = {"missing": 0, "invalid": 0}
    requests = 0
    started = time.monotonic()
    for i in range(15):
        for headers, reason in (({}, "missing"),
                                ({"X-Majordomo-Key": f"mdm_sk_wrong-{i}"}, "invalid"),
                                ({"Authorization": f"Bearer mdm_sk_wrong-{i}"}, "invalid")):
            for path in (f"/v1/models/random-{i}", f"/v1beta/models/random-{i}:generateContent",
                         f"/v1/messages/random-{i}", f"/nowhere-{i}"):
                got, seen = reached(upstream, scoped.send, "GET", path, None, headers=headers)
                assert got.status_code == 401 and seen == []
                error = got.json()["error"]  # the shape is still guessed from the path
                assert error["status"] == "UNAUTHENTICATED" if "v1beta" in path else \
                    error["type"] == "authentication_error"
                sent[reason] += 1
                requests += 1
    elapsed = time.monotonic() - started
    after = scoped.metrics()
    assert len(daemon.records()) == records
    new_series = {k for k in after if k not in before and k[0] != "steward_auth_refusals_created"}
    assert new_series == set()
    for reason, count in sent.items():
        key = ("steward_auth_refusals_total", (("reason", reason),))
        assert after[key] - before.get(key, 0) == count
    changed = {k for k in after if k[0].startswith("steward_requests") and
               after[k] != before.get(k)}
    assert changed == set()
    lines = [line for line in daemon.log()[log_start:].splitlines()
             if "without a valid gateway key" in line]
    # Rate-limited: one line, then at most one more per LOG_INTERVAL (10 s) the requests took.
    assert 1 <= len(lines) <= 1 + elapsed // LOG_INTERVAL
    assert "mdm_sk_wrong" not in daemon.log()[log_start:]


def test_labels_come_from_a_fixed_set(scoped: Scoped) -> None:
    key = scoped.keys["admin"]
    for i in range(12):
        scoped.send("GET", f"/v1/models/random-{i}", key)
        scoped.send("GET", f"/v1/responses/resp_{i}", key)
        scoped.send("POST", f"/v1/messages/other-{i}", key)
        scoped.send("GET", f"/v1beta/operations/op-{i}", key)
    endpoints = {dict(labels)["endpoint"] for name, labels in scoped.metrics()
                 if name == "steward_requests_total"}
    assert {"models/{id}", "responses/{id}", "other"} <= endpoints
    assert not any("random" in e or "resp_" in e or "op-" in e for e in endpoints), endpoints


def test_refusal_log_says_how_many_it_did_not_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    counted: list[str] = []
    refusals = Refusals(counted.append, interval=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="steward.access"):
        for _ in range(5):
            refusals.refused("invalid", "POST", "/v1/chat/completions", "10.0.0.7")
        now[0] += 10.0
        refusals.refused("missing", "GET", "/v1/models", "10.0.0.8")
    assert counted == ["invalid"] * 5 + ["missing"]
    assert len(caplog.records) == 2
    assert "10.0.0.7" in caplog.records[0].getMessage()
    assert "4 more refused" in caplog.records[1].getMessage()


# -- A gateway key never goes upstream ----------------------------------------------------------

CALLS = [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages"),
         ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent"),
         ("gemini", "/v1/models/gemini-2.5-flash:generateContent")]


@pytest.mark.parametrize(("provider", "path"), CALLS, ids=[c[1] for c in CALLS])
@pytest.mark.parametrize("where", ["authorization", "x-api-key", "x-goog-api-key", "query",
                                   "every header and the query"])
def test_a_gateway_key_is_never_forwarded(scoped: Scoped, upstream: FakeUpstream,
                                          provider: str, path: str, where: str) -> None:
    key = scoped.keys["inference"]
    headers: dict[str, str] = {}
    if where in ("authorization", "every header and the query"):
        headers["Authorization"] = f"Bearer {key}"
    if where in ("x-api-key", "every header and the query"):
        headers["x-api-key"] = key
    if where in ("x-goog-api-key", "every header and the query"):
        headers["x-goog-api-key"] = key
    if where == "every header and the query":
        headers["X-Note"] = f"from {key}"
    query = f"?alt=json&key={key}" if "query" in where else ""
    got, seen = reached(upstream, httpx.post, scoped.daemon.url + path + query,
                        headers=headers, json={"model": "m"}, timeout=30)
    assert got.status_code == 200, got.text  # authenticated by the key where the SDK put it
    (request,) = seen
    assert "mdm_sk_" not in json.dumps(request.headers) + request.query + request.raw_path
    assert ("alt=json" in request.query) == ("query" in where)
    name, value = INJECTED_AS[provider]
    assert header(request, name) == value
