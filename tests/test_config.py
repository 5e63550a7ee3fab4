from __future__ import annotations

from pathlib import Path

import pytest

from steward.config import (
    build_config,
    effective_dict,
    env_overrides,
    load_config,
    parse_duration,
    parse_size,
    set_value,
)
from steward.errors import ConfigError
from steward.home import init_home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    init_home(tmp_path / "h")
    return tmp_path / "h"


def test_defaults(home: Path) -> None:
    config = load_config(home, env={})
    assert (config.server.host, config.server.port, config.server.workers) == (
        "127.0.0.1", 7680, 1)
    assert config.limits.max_body_bytes == 32 * 1024 * 1024
    assert config.providers["openai"].base_url == "https://api.openai.com/v1"
    assert config.providers["anthropic"].base_url == "https://api.anthropic.com"
    assert config.providers["gemini"].base_url == "https://generativelanguage.googleapis.com"
    assert config.bodies_url() == (home / "bodies").as_uri()
    assert config.fsync_interval == 1.0


def test_environment_wins_over_file(home: Path) -> None:
    set_value(home, "server.port", "7700")
    assert load_config(home, env={}).server.port == 7700
    config = load_config(home, env={"STEWARD_SERVER__PORT": "7800",
                                    "STEWARD_PROVIDERS__OPENAI__BASE_URL": "http://h:1/v1"})
    assert config.server.port == 7800
    assert config.providers["openai"].base_url == "http://h:1/v1"


def test_set_keeps_comments_and_validates(home: Path) -> None:
    set_value(home, "limits.max_body_bytes", "8MiB")
    text = (home / "steward.toml").read_text()
    assert "# Steward gateway configuration." in text
    assert load_config(home, env={}).limits.max_body_bytes == 8 * 1024 * 1024
    with pytest.raises(ConfigError, match=r"steward.toml: server.port: must be between 1 and"):
        set_value(home, "server.port", "70000")
    with pytest.raises(ConfigError, match=r"server.port: expected a whole number, got 'abc'"):
        set_value(home, "server.port", "abc")
    with pytest.raises(ConfigError, match=r"server.nope: unknown key"):
        set_value(home, "server.nope", "1")
    with pytest.raises(ConfigError, match=r"not a setting"):
        set_value(home, "port", "1")
    assert load_config(home, env={}).server.port == 7680  # failed sets wrote nothing


def test_custom_provider(home: Path) -> None:
    set_value(home, "providers.groq.base_url", "https://api.groq.com/openai/v1")
    set_value(home, "providers.local.base_url", "http://127.0.0.1:11434")
    set_value(home, "providers.local.format", "anthropic")
    config = load_config(home, env={})
    assert config.providers["groq"].format == "openai"
    assert config.providers["local"].format == "anthropic"
    with pytest.raises(ConfigError, match=r"must be one of anthropic, .*gemini, openai"):
        set_value(home, "providers.local.format", "cohere")
    with pytest.raises(ConfigError, match="always speaks the openai format"):
        set_value(home, "providers.openai.format", "gemini")


def test_bad_files_name_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"f\.toml: providers\.x\.base_url: required"):
        build_config(tmp_path, {"providers": {"x": {"format": "openai"}}}, "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml: \[serve\]: unknown section"):
        build_config(tmp_path, {"serve": {}}, "f.toml")
    with pytest.raises(ConfigError, match=r"f\.toml: metadata\.fsync"):
        build_config(tmp_path, {"metadata": {"fsync": "sometimes"}}, "f.toml")
    (tmp_path / "steward.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path, env={})


def test_units() -> None:
    assert parse_size("32MiB") == 33554432 and parse_size(10) == 10
    assert parse_size("1.5k") == 1500
    assert parse_duration("5m") == 300 and parse_duration("250ms") == 0.25
    assert parse_duration(3) == 3.0
    with pytest.raises(ValueError):
        parse_size("lots")
    with pytest.raises(ValueError):
        parse_duration("1 fortnight")


def test_env_overrides_shape() -> None:
    assert env_overrides({"STEWARD_HOME": "/x", "STEWARD_SERVER__PORT": "1",
                          "STEWARD_PROVIDERS__A__BASE_URL": "u", "OTHER__X": "y"}) == {
        "server": {"port": "1"}, "providers": {"a": {"base_url": "u"}}}


def test_show_masks_credentials(home: Path) -> None:
    set_value(home, "metadata.upload_url", "https://user:pw@collector.example/ingest")
    shown = effective_dict(load_config(home, env={}))
    assert shown["metadata"]["upload_url"] == "https://****@collector.example/ingest"


def test_buffered_bodies_must_fit_one_body(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_buffered_body_bytes .* must be at least"):
        load_config(home, env={"STEWARD_LIMITS__MAX_BUFFERED_BODY_BYTES": "1MiB"})
