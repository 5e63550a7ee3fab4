"""Steward: a self-hosted LLM gateway. The CLI lives in `cli/`, installed as `steward.cli`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("steward")
except PackageNotFoundError:  # a bare source tree: say so rather than guess
    __version__ = "unknown (no package metadata; install Steward to get one)"
