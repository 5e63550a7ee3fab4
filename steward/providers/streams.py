"""Incremental framing of streamed responses: Server-Sent Events and streamed JSON arrays.

Both parsers accept bytes split anywhere and give the same result for any split.
"""

from __future__ import annotations

import re

_EOL = re.compile(rb"\r\n|\r|\n")


# The default cap on one line, and on one event's data (limits.max_sse_line_bytes).
MAX_SSE_LINE = 16 * 1024 * 1024


class SSEParser:
    """Yields (event, data) pairs per the WHATWG event-stream rules.

    The buffer grows by appending and is searched only from where the last search stopped, so
    a long line costs linear time. A line (or an event's data) longer than max_line is skipped
    up to its end, and its event with it: `skipped` counts them."""

    __slots__ = ("_buf", "_cr", "_data", "_drop", "_event", "_max_line", "_scan", "_size",
                 "_skipping", "skipped")

    def __init__(self, max_line: int = MAX_SSE_LINE) -> None:
        self._buf = bytearray()
        self._scan = 0  # no line end in _buf before this offset
        self._event = b""
        self._data: list[bytes] = []
        self._size = 0  # bytes in _data
        self._drop = False  # the event being read lost a line: not dispatched
        self._skipping = False  # inside an over-long line: discarded up to its end
        self._cr = False  # a skipped line ended in "\r" at a chunk's end: drop a "\n" next
        self._max_line = max_line
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        events: list[tuple[bytes, bytes]] = []
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._skipping:
            match = _EOL.search(chunk)
            if match is None:
                return events
            self._skipping = False
            self._cr = match.group() == b"\r" and match.end() == len(chunk)
            chunk = chunk[match.end():]
        buf = self._buf
        buf += chunk
        pos, scan, end = 0, self._scan, len(buf)
        while True:
            match = _EOL.search(buf, scan)
            if match is None:
                scan = end
                break
            if match.end() == end and buf[match.start()] == 0x0D:
                scan = match.start()  # maybe the first half of \r\n: wait for the next byte
                break
            if match.start() - pos > self._max_line:
                self._skip()
            else:
                self._line(bytes(buf[pos:match.start()]), events)
            pos = scan = match.end()
        del buf[:pos]  # from the front of a bytearray: no copy of the rest
        self._scan = scan - pos
        if len(buf) > self._max_line:
            ended = buf[-1] == 0x0D  # the line ended, maybe with its "\n" still to come
            buf.clear()
            self._scan = 0
            self._skipping, self._cr = not ended, ended
            self._skip()
        return events

    def _skip(self) -> None:
        self.skipped += 1
        self._data, self._size, self._drop = [], 0, True

    def _line(self, line: bytes, events: list[tuple[bytes, bytes]]) -> None:
        if not line:
            if self._data and not self._drop:
                events.append((self._event or b"message", b"\n".join(self._data)))
            self._event, self._data, self._size, self._drop = b"", [], 0, False
        elif self._drop or line[0] == 0x3A:  # lines starting with ':' are comments
            return
        else:
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._size += len(value)
                if self._size > self._max_line:
                    self._skip()
                else:
                    self._data.append(value)
            elif name == b"event":
                self._event = value


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
