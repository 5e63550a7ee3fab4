"""One request's bodies for the dashboard: fetched through the configured store (local, S3,
GCS) or from pending-bodies/ while they wait for it, already redacted when they were written,
and a stream's events put back together into the text the caller saw.

The text is read by the events' shapes, which each format documents: OpenAI chat deltas'
`choices[0].delta.content` (and completions' `choices[0].text`), Responses'
`response.output_text.delta`, Anthropic's `content_block_delta` text deltas, Gemini's
`candidates[0].content.parts[].text` (thoughts left out). Blocking: runs in a thread.
"""

from __future__ import annotations

import json
from typing import Any

from steward.bodies.document import open_document
from steward.bodies.stores import BodyStore
from steward.bodies.writer import pending_path
from steward.home import Home
from steward.providers.streams import SSEParser


def _body(part: Any) -> Any:
    """A document's request or response body as the API gives it: JSON parsed, text as text."""
    if not isinstance(part, dict):
        return None
    if part.get("body_encoding") == "empty":
        return None
    return part.get("body")


def _meta(part: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    return {n: part.get(n) for n in names} if isinstance(part, dict) else None


def event_text(obj: Any) -> str:
    """The text one streamed event adds, whichever of the known shapes it has."""
    if not isinstance(obj, dict):
        return ""
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        delta = first.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return delta["content"]
        return first["text"] if isinstance(first.get("text"), str) else ""
    kind = obj.get("type")
    if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
        return obj["delta"]
    if kind == "content_block_delta":
        delta = obj.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta":
            return delta.get("text") if isinstance(delta.get("text"), str) else ""
        return ""
    candidates = obj.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        content = candidates[0].get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list):
            return "".join(p["text"] for p in parts if isinstance(p, dict)
                           and isinstance(p.get("text"), str) and not p.get("thought"))
    return ""


def stream_text(body: Any) -> str | None:
    """The text of a whole stream: SSE text, or a streamed JSON array (Gemini without
    alt=sse); None when it is neither."""
    if isinstance(body, list):
        return "".join(event_text(item) for item in body)
    if not isinstance(body, str):
        return None
    parser = SSEParser()
    events = parser.feed(body.encode()) + parser.feed(b"\n\n")
    if not events:
        return None
    pieces = []
    for _, data in events:
        try:
            pieces.append(event_text(json.loads(data)))
        except ValueError:
            continue
    return "".join(pieces)


def view(home: Home, store: BodyStore | None, record: dict[str, Any]) -> dict[str, Any]:
    """What GET /api/requests/<id>/body answers."""
    out: dict[str, Any] = {"available": False, "error": None, "request": None,
                           "response": None, "stream": bool(record.get("stream")),
                           "response_text": None, "request_meta": None, "response_meta": None}
    ref = record.get("body_ref")
    if not ref:
        out["error"] = record.get("body_error") or "no body was kept for this request"
        return out
    key = "/".join(ref.split("/")[-5:])  # <key id>/<yyyy>/<mm>/<dd>/<id>.json.gz
    try:
        data = pending_path(home, key).read_bytes()
    except FileNotFoundError:
        if store is None:
            out["error"] = "bodies are off (bodies.enabled = false): the stored body cannot be read"
            return out
        try:
            data = store.get(key)
        except Exception as exc:  # each store raises its own kinds of "not there"
            out["error"] = (f"cannot read the body from {ref}: {exc.__class__.__name__}: "
                            f"{exc}")[:400]
            return out
    try:
        document = json.loads(open_document(data, str(record.get("id"))))
    except Exception as exc:  # not gzip, not JSON: say so rather than fail the page
        out["error"] = f"the stored body of {record.get('id')} cannot be read: {exc}"[:400]
        return out
    request, response = document.get("request"), document.get("response")
    out.update(available=True, request=_body(request), response=_body(response),
               request_meta=_meta(request, ("method", "path", "query", "headers",
                                            "body_encoding")),
               response_meta=_meta(response, ("status", "headers", "body_encoding")))
    if out["stream"] or (isinstance(response, dict) and response.get("body_encoding") == "sse"):
        out["stream"] = True
        out["response_text"] = stream_text(out["response"])
    return out
