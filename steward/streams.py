"""Incremental framing of streamed responses: Server-Sent Events and streamed JSON arrays.

Both parsers accept bytes split anywhere and give the same result for any split.
"""

from __future__ import annotations

import re

_EOL = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Yields (event, data) pairs per the WHATWG event-stream rules."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(buf)
        while pos < end:
            match = _EOL.search(buf, pos)
            if match is None:
                break
            if match.group() == b"\r" and match.end() == end:
                break  # maybe the first half of \r\n: wait for the next byte
            line = buf[pos:match.start()]
            pos = match.end()
            if not line:
                if self._data:
                    events.append((self._event or b"message", b"\n".join(self._data)))
                self._event, self._data = b"", []
            elif line[0] != 0x3A:  # lines starting with ':' are comments
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value
        self._buf = buf[pos:]
        return events


_JSON_TOKENS = re.compile(rb'[\[\]{}"\\]')


class JsonArrayScanner:
    """Yields each top-level element of a JSON array as its bytes, as soon as it is complete.

    Only the element being read is buffered, so memory stays bounded by the largest element.
    """

    __slots__ = ("_buf", "_depth", "_escape", "_in_string", "_pos", "_start")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._start = -1

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf
        buf += chunk
        out: list[bytes] = []
        pos = self._pos
        if self._escape and pos < len(buf):
            pos += 1
            self._escape = False
        depth, in_string, start = self._depth, self._in_string, self._start
        while True:
            match = _JSON_TOKENS.search(buf, pos)
            if match is None:
                pos = len(buf)
                break
            i = match.start()
            c = buf[i]
            pos = i + 1
            if in_string:
                if c == 0x5C:  # backslash: skip the escaped byte, possibly in the next chunk
                    if pos >= len(buf):
                        self._escape = True
                        break
                    pos += 1
                elif c == 0x22:
                    in_string = False
            elif c == 0x22:
                in_string = True
            elif c in (0x5B, 0x7B):
                depth += 1
                if depth == 2:
                    start = i
            elif c in (0x5D, 0x7D):
                if depth == 2 and start >= 0:
                    out.append(bytes(buf[start:pos]))
                    start = -1
                depth = max(depth - 1, 0)
        keep = start if start >= 0 else pos
        del buf[:keep]
        self._pos = pos - keep
        self._start = start - keep if start >= 0 else -1
        self._depth, self._in_string = depth, in_string
        return out
