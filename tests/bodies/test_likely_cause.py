"""`bucket test` names the likely cause from the error's words, never from a URL's digits."""

from __future__ import annotations

from botocore.exceptions import EndpointConnectionError

from steward.bodies.bucket import _likely_cause


def test_a_probe_name_holding_401_is_still_an_unreachable_endpoint() -> None:
    url = "http://127.0.0.1:46603/llm-bodies/x/steward-probe/db0f28b19883401404ea9f75bd.json.gz"
    assert _likely_cause(EndpointConnectionError(endpoint_url=url)).startswith(
        "the storage endpoint cannot be reached")


def test_status_codes_in_the_message_still_count() -> None:
    assert _likely_cause(Exception("An error occurred (403) when calling PutObject")).startswith(
        "permission denied")
    assert _likely_cause(Exception("HTTP 401 Unauthorized")).startswith(
        "the credentials are missing or wrong")
