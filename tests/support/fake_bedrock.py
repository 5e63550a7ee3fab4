"""A loopback AWS Bedrock runtime that checks what AWS checks: the SigV4 signature, verified
with botocore against the one set of credentials it was given (Steward's stored keys), so a
request signed by the caller for Steward's host is refused as Bedrock would refuse it.

It answers Converse, ConverseStream, InvokeModel (Claude's body), InvokeModelWithResponseStream
(Claude's events in `chunk` frames, then invocationMetrics), CountTokens and ListAsyncInvokes
(doctor's signed probe), deterministically, and keeps the exact bytes of each response so a
test can compare them with what reached the caller. Event-stream frames are encoded by the
small encoder in steward.providers.bedrock, which tests/providers/test_bedrock.py checks
against botocore's own parser.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from steward.providers.bedrock import encode_message
from tests.support.loopback import LoopbackServer

REGION = "us-east-1"
# Converse's inputTokens excludes the cache: 11 fresh + 120 read + 40 written (30 for 5 m,
# 10 for 1 h) = 171 input tokens in all.
CONVERSE_USAGE = {"inputTokens": 11, "outputTokens": 7, "totalTokens": 178,
                  "cacheReadInputTokens": 120, "cacheWriteInputTokens": 40,
                  "cacheDetails": [{"ttl": "5m", "inputTokens": 30},
                                   {"ttl": "1h", "inputTokens": 10}]}
CLAUDE_USAGE = {"input_tokens": 21, "output_tokens": 9, "cache_read_input_tokens": 300,
                "cache_creation_input_tokens": 50,
                "cache_creation": {"ephemeral_5m_input_tokens": 50,
                                   "ephemeral_1h_input_tokens": 0}}
# The stream's own closing count; its cache figures must not be lost.
INVOCATION_METRICS = {"inputTokenCount": 21, "outputTokenCount": 9, "invocationLatency": 321,
                      "firstByteLatency": 123, "cacheReadInputTokenCount": 300,
                      "cacheWriteInputTokenCount": 50}
PIECES = ["Hello", " from", " Bedrock"]
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")
_PATH = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream|converse|"
                   r"converse-stream|count-tokens)")


@dataclass
class Seen:
    method: str
    raw_path: str
    model: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]  # as sent, repeats included
    body: bytes
    signed_by: str | None  # the access key id whose signature verified, None: refused
    sent: bytes = b""  # the exact response body


@dataclass
class FakeBedrock:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    requests: list[Seen] = field(default_factory=list)
    server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def start(self) -> FakeBedrock:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = LoopbackServer(app, name="fake-bedrock")
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def last(self) -> Seen:
        return self.requests[-1]

    # -- SigV4, as AWS checks it --------------------------------------------------------

    def verify(self, request: web.Request, body: bytes) -> str:
        """The reason the signature is refused, or "" when it verifies."""
        match = _AUTH.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "Authorization header requires a SigV4 signature"
        key_id, day, region, service, signed_names, signature = match.groups()
        if key_id != self.access_key_id:
            return "The security token included in the request is invalid."
        if (region, service) != (REGION, "bedrock"):
            return f"Credential should be scoped to a valid region and service ({region})"
        if self.session_token and request.headers.get("X-Amz-Security-Token") != \
                self.session_token:
            return "The security token included in the request is invalid."
        names = signed_names.split(";")
        headers = {n: request.headers[n] for n in names if n != "host" and n in request.headers}
        url = f"http://{request.headers['Host']}{request.raw_path}"
        aws = AWSRequest(method=request.method, url=url, headers=headers, data=body)
        amz_date = request.headers.get("X-Amz-Date", "")
        if not amz_date.startswith(day):
            return "X-Amz-Date does not match the credential scope"
        aws.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key_id, self.secret_access_key,
                                       self.session_token), "bedrock", REGION)
        canonical = signer.canonical_request(aws)
        expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
        if expected != signature:
            return ("The request signature we calculated does not match the signature you "
                    "provided.")
        return ""

    # -- answers ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.raw_path.split("?")[0]
        call = _PATH.fullmatch(path)
        model = unquote(call.group(1)) if call else ""
        seen = Seen(request.method, request.raw_path, model,
                    {k.lower(): v for k, v in request.headers.items()},
                    [(k.lower(), v) for k, v in request.headers.items()], body, None)
        self.requests.append(seen)
        refused = self.verify(request, body)
        if refused:
            kind = "UnrecognizedClientException" if "token" in refused \
                else "InvalidSignatureException"
            return self._error(seen, 403, kind, refused)
        seen.signed_by = self.access_key_id
        if request.method == "GET" and path == "/async-invoke":
            return self._json(seen, {"asyncInvokeSummaries": []})
        if call is None or request.method != "POST":
            return self._error(seen, 404, "UnknownOperationException", "")
        op = call.group(2)
        if op == "converse":
            return self._json(seen, {
                "output": {"message": {"role": "assistant",
                                       "content": [{"text": "".join(PIECES)}]}},
                "stopReason": "end_turn", "usage": CONVERSE_USAGE,
                "metrics": {"latencyMs": 250}})
        if op == "count-tokens":
            return self._json(seen, {"inputTokens": 42})
        if op == "invoke":
            return self._json(seen, {
                "id": "msg_bdrk_01", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": "".join(PIECES)}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": CLAUDE_USAGE},
                {"X-Amzn-Bedrock-Input-Token-Count": "21",
                 "X-Amzn-Bedrock-Output-Token-Count": "9"})
        frames = self.converse_frames() if op == "converse-stream" else self.invoke_frames()
        return await self._stream(request, seen, frames)

    @staticmethod
    def converse_frames() -> list[bytes]:
        def event(kind: str, payload: dict[str, Any]) -> bytes:
            payload = {**payload, "p": "abcdefghij"}
            return encode_message({":event-type": kind, ":content-type": "application/json",
                                   ":message-type": "event"}, json.dumps(payload).encode())

        return [event("messageStart", {"role": "assistant"}),
                *(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}})
                  for t in PIECES),
                event("contentBlockStop", {"contentBlockIndex": 0}),
                event("messageStop", {"stopReason": "end_turn"}),
                event("metadata", {"usage": CONVERSE_USAGE, "metrics": {"latencyMs": 250}})]

    @staticmethod
    def invoke_frames() -> list[bytes]:
        def chunk(obj: dict[str, Any]) -> bytes:
            data = base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()
            return encode_message({":event-type": "chunk", ":content-type": "application/json",
                                   ":message-type": "event"},
                                  json.dumps({"bytes": data, "p": "abcd"}).encode())

        start_usage = {**CLAUDE_USAGE, "output_tokens": 1}
        return [chunk({"type": "message_start", "message": {
                    "id": "msg_bdrk_02", "type": "message", "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None,
                    "stop_sequence": None, "usage": start_usage}}),
                chunk({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
                *(chunk({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": t}}) for t in PIECES),
                chunk({"type": "content_block_stop", "index": 0}),
                chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                          "stop_sequence": None},
                       "usage": {"output_tokens": 9}}),
                chunk({"type": "message_stop",
                       "amazon-bedrock-invocationMetrics": INVOCATION_METRICS})]

    async def _stream(self, request: web.Request, seen: Seen, frames: list[bytes]
                      ) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "x-amzn-RequestId": "fake-request-id",
            "X-Amzn-Bedrock-Content-Type": "application/json"})
        await response.prepare(request)
        for frame in frames:
            seen.sent += frame
            await response.write(frame)
        await response.write_eof()
        return response

    def _json(self, seen: Seen, obj: dict[str, Any], headers: dict[str, str] | None = None
              ) -> web.Response:
        seen.sent = json.dumps(obj).encode()
        return web.Response(body=seen.sent, content_type="application/json",
                            headers={"x-amzn-RequestId": "fake-request-id", **(headers or {})})

    def _error(self, seen: Seen, status: int, kind: str, message: str) -> web.Response:
        seen.sent = json.dumps({"message": message}).encode()
        return web.Response(status=status, body=seen.sent, content_type="application/json",
                            headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/",
                                     "x-amzn-RequestId": "fake-request-id"})
