"""Exceptions that carry a message meant for a person, never a traceback."""

from __future__ import annotations


class StewardError(Exception):
    """A failure the operator can act on; the CLI prints it as one line."""

    exit_code = 1


class ConfigError(StewardError):
    """Bad configuration: named key, named file, exit code 2."""

    exit_code = 2


class NotFoundError(StewardError):
    """A named object (key, provider, model) does not exist."""


class GatewayError(Exception):
    """A failure on the request path, answered in the detected provider's error shape."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 record_error: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.record_error = record_error  # the record's error when not the message itself
