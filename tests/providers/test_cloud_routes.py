"""Routes, scopes and upstream hosts of the Vertex AI and Azure OpenAI formats."""

from __future__ import annotations

import pytest

from steward import providers
from steward.errors import GatewayError
from steward.providers.azure import FORMAT as AZURE
from steward.providers.vertex import DEFAULT_BASE_URL
from steward.providers.vertex import FORMAT as VERTEX

P = "/v1/projects/p/locations/us-central1/publishers"


@pytest.mark.parametrize(("method", "path", "endpoint", "model", "scope"), [
    ("POST", f"{P}/google/models/gemini-2.5-pro:generateContent", "generateContent",
     "gemini-2.5-pro", None),
    ("POST", f"{P}/google/models/gemini-2.5-pro:streamGenerateContent", "streamGenerateContent",
     "gemini-2.5-pro", None),
    ("POST", f"{P}/google/models/gemini-2.5-pro:countTokens", "countTokens", "gemini-2.5-pro",
     None),
    ("POST", f"{P}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict", "rawPredict",
     "claude-sonnet-4-5@20250929", None),
    ("POST", f"{P}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
     "streamRawPredict", "claude-sonnet-4-5@20250929", None),
    ("POST", f"{P}/anthropic/models/count-tokens:rawPredict", "count-tokens", None, None),
    ("POST", "/v1beta1/projects/p/locations/global/publishers/google/models/m:generateContent",
     "generateContent", "m", None),
    ("GET", f"{P}/google/models/gemini-2.5-pro:generateContent", "other", None, "admin"),
    ("POST", f"{P}/google/models/gemini-2.5-pro:predict", "other", None, "admin"),
    ("POST", "/v1/projects/p/locations/us-central1/batchPredictionJobs", "batches", None,
     "batches"),
    ("POST", "/v1/projects/p/locations/us-central1/tuningJobs", "fine_tuning", None,
     "fine_tuning"),
    ("DELETE", "/v1/projects/p/locations/us-central1/endpoints/e", "other", None, "admin"),
])
def test_vertex_routes(method: str, path: str, endpoint: str, model: str | None,
                       scope: str | None) -> None:
    route = VERTEX.route(method, path)
    assert route is not None
    assert (route.endpoint, route.model, route.scope, route.upstream_path) == (
        endpoint, model, scope, path)


def test_vertex_paths_are_detected_before_openai_and_gemini() -> None:
    detected = next(f for f in providers.detection_order()
                    if f.route("POST", f"{P}/google/models/m:generateContent"))
    assert detected is VERTEX
    assert VERTEX.route("POST", "/v1beta/models/gemini-2.5-pro:generateContent") is None
    assert VERTEX.route("POST", "/v1/chat/completions") is None


@pytest.mark.parametrize(("location", "host"), [
    ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
    ("europe-west4", "https://europe-west4-aiplatform.googleapis.com"),
    ("global", "https://aiplatform.googleapis.com"),
    ("us", "https://aiplatform.us.rep.googleapis.com"),
    ("eu", "https://aiplatform.eu.rep.googleapis.com"),
])
def test_the_host_follows_the_location(location: str, host: str) -> None:
    path = f"/v1/projects/p/locations/{location}/publishers/google/models/m:generateContent"
    route = VERTEX.classify("POST", path)
    assert VERTEX.upstream_base(DEFAULT_BASE_URL, route, b"") == host
    assert VERTEX.upstream_base("http://127.0.0.1:9999", route, b"") == "http://127.0.0.1:9999"


@pytest.mark.parametrize("location", ["evil.example.com#", "a@b", "US-CENTRAL1", "x:80"])
def test_a_location_never_makes_a_host(location: str) -> None:
    route = VERTEX.classify("POST", f"/v1/projects/p/locations/{location}/publishers/google/"
                            "models/m:generateContent")
    with pytest.raises(GatewayError) as refused:
        VERTEX.upstream_base(DEFAULT_BASE_URL, route, b"")
    assert refused.value.status == 400


@pytest.mark.parametrize(("method", "path", "endpoint", "model", "scope"), [
    ("POST", "/openai/deployments/prod/chat/completions", "chat/completions", "prod", None),
    ("POST", "/openai/deployments/prod/completions", "completions", "prod", None),
    ("POST", "/openai/deployments/emb/embeddings", "embeddings", "emb", None),
    ("POST", "/openai/deployments/w/audio/transcriptions", "audio/transcriptions", "w", None),
    ("POST", "/openai/deployments/prod/extensions/chat/completions", "other", None, "admin"),
    ("POST", "/openai/responses", "responses", None, None),
    ("POST", "/openai/v1/chat/completions", "chat/completions", None, None),
    ("POST", "/openai/v1/responses", "responses", None, None),
    ("GET", "/openai/v1/models", "models", None, None),
    ("POST", "/openai/v1/files", "files", None, "files"),
    ("POST", "/openai/batches", "batches", None, "batches"),
    ("DELETE", "/openai/deployments/prod", "other", None, "admin"),
])
def test_azure_routes(method: str, path: str, endpoint: str, model: str | None,
                      scope: str | None) -> None:
    route = AZURE.route(method, path)
    assert route is not None
    assert (route.endpoint, route.model, route.scope, route.upstream_path) == (
        endpoint, model, scope, path)


def test_azure_wants_api_version_except_on_v1() -> None:
    base = "https://res.openai.azure.com"
    chat = AZURE.classify("POST", "/openai/deployments/prod/chat/completions")
    assert AZURE.upstream_base(base, chat, b"api-version=2024-10-21") == base
    with pytest.raises(GatewayError) as refused:
        AZURE.upstream_base(base, chat, b"foo=1")
    assert refused.value.status == 400 and "api-version" in refused.value.message
    v1 = AZURE.classify("POST", "/openai/v1/chat/completions")
    assert AZURE.upstream_base(base, v1, b"") == base
