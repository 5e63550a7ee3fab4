"""A loopback Azure OpenAI resource: what Azure checks, what Azure adds.

It accepts only its own key in `api-key` (the v1 routes also as `Authorization: Bearer`),
answers a deployments route without `api-version` with Azure's bare 404, reports the
deployment's underlying model (not the deployment name) as `model`, adds content-filter results,
and streams as Azure does: a first chunk with only `prompt_filter_results` (`choices: []`,
`model: ""`), a content-filter chunk without a delta, and the usage chunk when asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.fake_upstream import CHAT_USAGE, CREATED, TEXT_PIECES, Seen
from tests.support.loopback import CatchAllFake, LoopbackServer

AZURE_KEY = "azure-key-0123456789abcdef0123456789abcdef"
# deployment -> the model it serves, as Azure reports it in responses
DEPLOYMENTS = {"prod-4o": "gpt-4o-2024-08-06", "mini": "gpt-4o-mini-2024-07-18",
               "embed": "text-embedding-3-small"}
_FILTERS = {"hate": {"filtered": False, "severity": "safe"},
            "self_harm": {"filtered": False, "severity": "safe"},
            "sexual": {"filtered": False, "severity": "safe"},
            "violence": {"filtered": False, "severity": "safe"}}
PROMPT_FILTERS = [{"prompt_index": 0, "content_filter_results": {
    **_FILTERS, "jailbreak": {"filtered": False, "detected": False}}}]


@dataclass
class FakeAzure(CatchAllFake):
    key: str = AZURE_KEY
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    _server: LoopbackServer | None = None

    name = "fake-azure"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen.of(request, body))
        path = request.path
        v1 = path.startswith("/openai/v1/")
        presented = request.headers.get("api-key")
        bearer = request.headers.get("Authorization", "")
        if v1 and presented is None and bearer.startswith("Bearer "):
            presented = bearer[7:]
        if presented != self.key:
            return error(401, "401", "Access denied due to invalid subscription key or wrong API "
                         "endpoint. Make sure to provide a valid key for an active subscription "
                         "and use a correct regional API endpoint for your resource.")
        payload: dict[str, Any] = json.loads(body) if body else {}
        if path == "/openai/models" and "api-version" in request.query:
            return web.json_response({"object": "list", "data": [
                {"id": model, "object": "model", "status": "succeeded"}
                for model in sorted(set(DEPLOYMENTS.values()))]})
        if v1:
            deployment, operation = payload.get("model", ""), path[len("/openai/v1"):]
        elif path.startswith("/openai/deployments/"):
            deployment, _, operation = path[len("/openai/deployments/"):].partition("/")
            operation = "/" + operation
            if "api-version" not in request.query:
                return error(404, "404", "Resource not found")
        else:
            return error(404, "404", "Resource not found")
        model = DEPLOYMENTS.get(deployment)
        if model is None:
            return error(404, "DeploymentNotFound", f"The API deployment for this resource does "
                         f"not exist: {deployment}")
        if operation == "/embeddings":
            return web.json_response({
                "object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
                "usage": {"prompt_tokens": 8, "total_tokens": 8}})
        if operation != "/chat/completions":
            return error(404, "404", "Resource not found")
        if payload.get("stream"):
            return await self.stream(request, model, payload)
        return web.json_response({
            "id": "chatcmpl-azure", "object": "chat.completion", "created": CREATED,
            "model": model, "system_fingerprint": "fp_azure",
            "prompt_filter_results": PROMPT_FILTERS,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "content_filter_results": _FILTERS,
                         "message": {"role": "assistant", "content": "".join(TEXT_PIECES),
                                     "refusal": None}}],
            "usage": CHAT_USAGE}, headers={"apim-request-id": "fake-apim"})

    async def stream(self, request: web.Request, model: str, payload: dict[str, Any]
                     ) -> web.StreamResponse:
        base = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": CREATED,
                "model": model, "system_fingerprint": "fp_azure"}
        chunks: list[dict[str, Any]] = [
            {"choices": [], "created": 0, "id": "", "model": "", "object": "",
             "prompt_filter_results": PROMPT_FILTERS}]
        chunks.append({**base, "choices": [{"index": 0, "finish_reason": None, "logprobs": None,
                                            "content_filter_results": {},
                                            "delta": {"role": "assistant", "content": ""}}]})
        chunks += [{**base, "choices": [{"index": 0, "finish_reason": None, "logprobs": None,
                                         "content_filter_results": _FILTERS,
                                         "delta": {"content": piece}}]}
                   for piece in TEXT_PIECES]
        chunks.append({**base, "choices": [{"index": 0, "finish_reason": "stop",
                                            "logprobs": None, "delta": {}}]})
        # The asynchronous filter's verdict on the last stretch of text: no delta at all.
        chunks.append({**base, "choices": [{"index": 0, "finish_reason": None,
                                            "content_filter_results": _FILTERS,
                                            "content_filter_offsets": {
                                                "check_offset": 0, "start_offset": 0,
                                                "end_offset": 19}}]})
        if (payload.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": CHAT_USAGE})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "apim-request-id": "fake-apim"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
