"""inflate: a compressed body decompressed a bounded piece at a time."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from steward.providers.encoding import decompressor, inflate


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_pieces_are_bounded_and_add_up_to_the_body(encoding: str) -> None:
    body = os.urandom(1000) * 50  # compresses well: one small input, many pieces out
    data = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    pieces = list(inflate(decompressor(encoding), data, piece=4096))
    assert all(len(p) <= 4096 for p in pieces) and len(pieces) > 10
    assert b"".join(pieces) == body


def test_a_caller_can_stop_before_a_bomb_inflates_whole() -> None:
    bomb = gzip.compress(bytes(64 * 1024**2))
    seen = 0
    for piece in inflate(decompressor("gzip"), bomb, piece=1024**2):
        seen += len(piece)
        if seen > 2 * 1024**2:
            break
    assert seen <= 3 * 1024**2


def test_data_that_is_not_the_encoding_raises() -> None:
    with pytest.raises(zlib.error):
        list(inflate(decompressor("gzip"), b"not gzip at all"))
