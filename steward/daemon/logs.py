"""Log lines: JSON objects when stderr is not a terminal (journald, containers), readable
text when it is. Access lines carry their fields under "access"; secrets never reach a log."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access:
            line.update(access)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        access = getattr(record, "access", None)
        if access:
            text += " " + " ".join(f"{k}={v}" for k, v in access.items() if v is not None)
        return text


class AccessLines:
    """The per-request access line, written straight to the log stream in the same shape the
    formatters give: through `logging` (a LogRecord, the caller's frame looked up, a handler
    lock) it cost more CPU than proxying a small request."""

    def __init__(self) -> None:
        self.enabled = True
        self.json = True
        self.stream: Any = sys.stderr

    def write(self, message: str, fields: dict[str, Any]) -> None:
        now = time.time()
        if self.json:
            line = json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                               + f".{int(now * 1000) % 1000:03d}Z", "level": "info",
                               "logger": "steward.access", "msg": message, **fields},
                              default=str)
        else:
            line = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
                    + f",{int(now * 1000) % 1000:03d} INFO steward.access: {message} "
                    + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail a request
            pass


ACCESS = AccessLines()


def access_lines(on: bool) -> None:
    """One access line per request, or none (server.access_log = false, for high rates);
    warnings about refused keys on the same logger are kept either way."""
    ACCESS.enabled = on
    logging.getLogger("steward.access").setLevel(logging.INFO if on else logging.WARNING)


def configure(style: str = "auto", level: int = logging.INFO, access: bool = True) -> None:
    access_lines(access)
    use_json = style == "json" or (style == "auto" and not sys.stderr.isatty())
    ACCESS.json, ACCESS.stream = use_json, sys.stderr
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
