"""Decompressing a gzip or deflate body a bounded piece at a time, for metering and storage."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

DECODE_PIECE = 1024 * 1024  # decompressed at a time, so one small chunk cannot inflate at once


def decompressor(encoding: str) -> Any:
    """A zlib decompressor for a Content-Encoding of gzip or deflate."""
    return zlib.decompressobj(32 + 15 if encoding == "gzip" else 15)  # 32+: gzip or zlib header


def inflate(decoder: Any, data: bytes, piece: int = DECODE_PIECE) -> Iterator[bytes]:
    """data through decoder, at most piece bytes at a time, so a caller can stop before a bomb
    inflates whole; raises zlib.error when the data is not what the encoding says."""
    while True:
        out = decoder.decompress(data, piece)
        yield out
        data = decoder.unconsumed_tail
        if not data and len(out) < piece:  # else output may still be pending
            return
