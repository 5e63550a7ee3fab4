"""Reading what the local bodies store holds, as Steward does: packed bodies are not files."""

from __future__ import annotations

import gzip
import json
import random
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from steward.bodies.stores import LocalStore
from steward.bodies.writer import Capture, build_document, object_key
from steward.ids import uuid7


def stored_bytes(ref: str) -> bytes | None:
    """The gzipped document a local body_ref (file://<root>/<key id>/<y>/<m>/<d>/<name>) names,
    or None while it is not stored."""
    path = Path(unquote(urlparse(ref).path))
    key = "/".join(path.parts[-5:])
    try:
        return LocalStore(path.parents[4]).get(key)
    except FileNotFoundError:
        return None


def stored_document(ref: str) -> dict[str, Any] | None:
    data = stored_bytes(ref)
    return None if data is None else json.loads(gzip.decompress(data))


def count_bodies(root: Path) -> int:
    """Bodies readable from a local store (packed or one file each)."""
    return sum(row["bodies"] for row in LocalStore(root).usage())


WORDS = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be",
    "at", "by", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which",
    "one", "you", "were", "her", "all", "she", "there", "would", "their", "we", "him", "been",
    "has", "when", "who", "will", "more", "no", "if", "out", "so", "said", "what", "up", "its",
    "about", "into", "than", "them", "can", "only", "other", "new", "some", "could", "time",
    "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our",
    "over", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before",
    "must", "through", "back", "years", "where", "much", "your", "way", "well", "down",
    "should", "because", "each", "just", "those", "people", "how", "too", "little", "state",
    "good", "very", "make", "world", "still", "own", "see", "men", "work", "long", "get",
    "here", "between", "both", "life", "being", "under", "never", "day", "same", "another",
    "know", "while", "last", "might", "us", "great", "old", "year", "off", "come", "since",
    "against", "go", "came", "right", "used", "take", "three", "invoice", "refund", "customer",
    "order", "shipping", "summary", "translate", "python", "function", "error", "database",
    "request", "response", "model", "token", "latency"
]  # for prompts and answers that compress as English does


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."


def _sentences(rng: random.Random, count: int) -> str:
    return " ".join(sentence(rng, rng.randint(5, 20)) for _ in range(count))


def chat_document(rng: random.Random, key_id: str, ts: float) -> tuple[str, bytes]:
    """(key, document): one chat request and its completion as the gateway stores them, under
    a time-ordered id as the gateway gives (its day is where `bodies get` looks)."""
    request_id = str(uuid7(int(ts * 1e9)))
    prompt = _sentences(rng, rng.randint(1, 12))
    answer = _sentences(rng, rng.randint(1, 8))
    request = json.dumps({"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt}]}).encode()
    response = json.dumps({
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
        "created": int(ts), "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(answer) // 4,
                  "total_tokens": (len(prompt) + len(answer)) // 4}}).encode()
    capture = Capture(
        object_key(key_id, request_id, ts),
        {"id": request_id, "ts": ts, "api_key_id": key_id, "provider": "openai",
         "model": "gpt-4o-mini", "method": "POST", "path": "/v1/chat/completions"},
        [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-x"),
         (b"user-agent", b"OpenAI/Python 1.54.0"), (b"x-majordomo-key", b"mdm_x")],
        request, b"")
    capture.response_status = 200
    capture.response_headers = [(b"content-type", b"application/json"),
                                (b"x-request-id", f"req_{uuid.uuid4().hex}".encode())]
    capture.response_chunks = [response]
    return capture.key, build_document(capture)
