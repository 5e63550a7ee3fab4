"""steward.toml: typed sections, environment overrides and validated dotted-key edits.

Reading uses the stdlib's tomllib; editing uses tomlkit so the operator's comments survive
`steward config set`.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from steward import providers
from steward.errors import ConfigError
from steward.files import write_private
from steward.home import Home

ENV_PREFIX = "STEWARD_"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as '32MiB'."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 32MiB")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 512KiB, 32MiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as '1s', '5m', '7d'."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s")
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(f"{value!r} is not a duration (examples: 30, 1.5s, 5m, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _int_between(low: int, high: int) -> dict[str, Any]:
    def check(v: int) -> None:
        if not low <= v <= high:
            raise ValueError(f"must be between {low} and {high}")
    return {"check": check}


def _positive(v: float) -> None:
    if v <= 0:
        raise ValueError("must be greater than 0")


def _http_url(v: str) -> None:
    if not re.match(r"^https?://[^/\s?#]+", v):
        raise ValueError(f"{v!r} is not an http(s) URL")


def _optional_http_url(v: str) -> None:
    if v:
        _http_url(v)


def fsync_interval(policy: str) -> float | None:
    """An fsync policy ("always", "never", or an interval) as seconds: 0 always, None never."""
    if policy == "never":
        return None
    return 0.0 if policy == "always" else parse_duration(policy)


def _parse_retention(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in ("off", "never", "forever"):
        return 0.0
    return parse_duration(value)


def min_free_bytes(policy: str, disk_bytes: int) -> int:
    """bodies.min_free for a disk of this size."""
    text = policy.strip().lower()
    if text == "auto":
        return min(disk_bytes // 20, 1024**3)
    if text.endswith("%"):
        return int(disk_bytes * float(text[:-1]) / 100)
    return parse_size(text)


def _min_free(v: str) -> None:
    text = str(v).strip().lower()
    if text.endswith("%"):
        if not re.fullmatch(r"\d+(\.\d+)?%", text) or float(text[:-1]) >= 100:
            raise ValueError("must be a percentage under 100%, a size, auto or 0")
    elif text != "auto":
        parse_size(text)


def _fsync_policy(v: str) -> None:
    if v not in ("always", "never"):
        parse_duration(v)


def _log_format(v: str) -> None:
    if v not in ("auto", "json", "text"):
        raise ValueError("must be auto (JSON unless on a terminal), json or text")


def parse_deployments(value: Any) -> tuple[tuple[str, str], ...]:
    """{deployment = "model"} from a TOML table, `name=model,…` (environment, CLI) or pairs."""
    if isinstance(value, str):
        items: Any = [item.split("=", 1) for item in value.split(",") if item.strip()]
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = value
    if not isinstance(items, list | tuple) or not all(
            isinstance(i, list | tuple) and len(i) == 2 and all(isinstance(v, str) and v.strip()
                                                                 for v in i) for i in items):
        raise ValueError("expected deployment = \"model\" pairs, e.g. {prod-4o = "
                         "\"gpt-4o-2024-08-06\"} or prod-4o=gpt-4o-2024-08-06")
    return tuple((name.strip(), model.strip()) for name, model in items)


def _region(v: str) -> None:
    if v and not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", v):
        raise ValueError(f"{v!r} is not a cloud region name (e.g. us-east-1, eu-west-3)")


def _credentials_source(v: str) -> None:
    if v not in ("stored", "default"):
        raise ValueError("must be stored (set with `steward providers set`) or default (the "
                         "cloud SDK's own credential chain)")


def _wire_format(v: str) -> None:
    if providers.find(v) is None:
        raise ValueError(f"must be one of {', '.join(sorted(providers.FORMATS))} (or a format "
                         f"an installed package registers as a {providers.ENTRY_POINT_GROUP!r} "
                         "entry point)")


SIZE = {"parse": parse_size}
DURATION = {"parse": parse_duration}


def _node_name(v: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}", v):
        raise ValueError("a node name is 1-253 letters, digits, '.', '_' or '-'")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=7680, metadata=_int_between(1, 65535))
    workers: int = field(default=1, metadata=_int_between(1, 64))
    admin_host: str = "127.0.0.1"
    admin_port: int = field(default=7681, metadata=_int_between(0, 65535))  # 0: no admin port
    drain_timeout: float = field(default=30.0, metadata={**DURATION, "check": _positive})
    log_format: str = field(default="auto", metadata={"check": _log_format})
    access_log: bool = True  # one log line per request
    # Every metadata record carries it, so a control plane can tell replicas apart.
    node_name: str = field(default_factory=socket.gethostname, metadata={"check": _node_name})


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream. Any name works; `format` says which wire format it speaks."""

    format: str = field(default_factory=lambda: providers.default_format().name,
                        metadata={"check": _wire_format})
    base_url: str = field(default="", metadata={"check": _http_url})
    # False: Steward replaces whatever credential the caller sends with the stored key.
    # Formats that sign requests (Bedrock, Vertex) never forward the caller's credentials.
    allow_caller_credentials: bool = True
    # Azure: deployment -> the model it serves, for pricing (`eu/gpt-4o-2024-08-06` for a
    # data-zone deployment's prices).
    deployments: tuple[tuple[str, str], ...] = field(default=(),
                                                     metadata={"parse": parse_deployments})
    # For formats that sign or mint credentials: "stored" (set with `steward providers set`)
    # or "default" (the cloud SDK's own chain: instance role, environment, ADC) for requests
    # whose gateway key has no credential of its own.
    credentials: str = field(default="stored", metadata={"check": _credentials_source})
    # The cloud region requests are signed for and sent to (Bedrock: `{region}` in base_url);
    # empty: us-east-1.
    region: str = field(default="", metadata={"check": _region})


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = field(default=32 * 1024**2, metadata={**SIZE, "check": _positive})
    # Request bodies held at once, all requests together: past it, 503 with Retry-After.
    max_buffered_body_bytes: int = field(default=512 * 1024**2,
                                         metadata={**SIZE, "check": _positive})
    connect_timeout: float = field(default=10.0, metadata={**DURATION, "check": _positive})
    read_timeout: float = field(default=600.0, metadata={**DURATION, "check": _positive})
    stream_idle_timeout: float = field(default=300.0, metadata={**DURATION, "check": _positive})
    max_stream_duration: float = field(default=3600.0, metadata={**DURATION, "check": _positive})
    client_timeout: float = field(default=60.0, metadata={**DURATION, "check": _positive})
    max_headers: int = field(default=100, metadata=_int_between(1, 10000))
    max_header_bytes: int = field(default=64 * 1024, metadata={**SIZE, "check": _positive})
    max_url_bytes: int = field(default=8 * 1024, metadata={**SIZE, "check": _positive})
    max_tags: int = field(default=32, metadata=_int_between(0, 1000))
    max_tag_bytes: int = field(default=512, metadata=_int_between(1, 65536))
    upstream_connections: int = field(default=1000, metadata=_int_between(1, 100000))
    max_concurrent_per_provider: int = field(default=512, metadata=_int_between(1, 100000))
    max_queued_per_provider: int = field(default=1024, metadata=_int_between(0, 1000000))
    max_concurrent_per_key: int = field(default=0, metadata=_int_between(0, 100000))  # 0: off
    # One line of a streamed response read for usage (image events carry megabytes of base64).
    max_sse_line_bytes: int = field(default=16 * 1024**2, metadata={**SIZE, "check": _positive})


def _bodies_url(v: str) -> None:
    if v and not re.match(r"^(file:///|s3://[^/]+|gs://[^/]+)", v):
        raise ValueError(f"{v!r}: use file:///path, s3://bucket[/prefix] or gs://bucket[/prefix]")


def _sse(v: str) -> None:
    if v not in ("", "AES256", "aws:kms"):
        raise ValueError("must be empty, AES256 or aws:kms")


@dataclass(frozen=True)
class BodiesConfig:
    enabled: bool = True
    url: str = field(default="", metadata={"check": _bodies_url})  # empty: file://<home>/bodies
    region: str = ""
    endpoint_url: str = field(default="", metadata={"check": _optional_http_url})
    sse: str = field(default="", metadata={"check": _sse})
    kms_key_id: str = ""
    credentials_file: str = ""  # GCS service-account JSON; empty: default credentials
    workers: int = field(default=4, metadata=_int_between(1, 64))
    queue_bytes: int = field(default=256 * 1024**2, metadata={**SIZE, "check": _positive})
    # Local directory only: fsync each body ("always"), or flush all at an interval / "never".
    fsync: str = field(default="1s", metadata={"check": _fsync_policy})
    # Local directory only: days of bodies older than this are deleted; 0 or "off" keeps all.
    retention: float = field(default=30 * 86400.0, metadata={"parse": _parse_retention})
    # Free space below which bodies are not written locally: a size, a percentage of the
    # disk, "auto" (the smaller of 5% and 1 GiB) or 0 (no guard).
    min_free: str = field(default="auto", metadata={"check": _min_free})


def _upload_format(v: str) -> None:
    if v not in ("ndjson", "majordomo"):
        raise ValueError("must be ndjson or majordomo")


def parse_names(value: Any) -> tuple[str, ...]:
    """A list of tag names from a TOML array or a comma-separated string (environment, CLI).

    Tags are stored lower-cased, so the names are too."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of tag names, e.g. [\"team\", \"feature\"] or "
                         "team,feature")
    names = tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip()))
    for name in names:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name):
            raise ValueError(f"{name!r} is not a tag name")
    return names


def _optional_uuid(v: str) -> None:
    if v and not re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", v):
        raise ValueError(f"{v!r} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")


@dataclass(frozen=True)
class MetadataConfig:
    upload_url: str = field(default="", metadata={"check": _optional_http_url})
    format: str = field(default="ndjson", metadata={"check": _upload_format})
    batch_size: int = field(default=500, metadata=_int_between(1, 100000))
    interval: float = field(default=5.0, metadata={**DURATION, "check": _positive})
    fsync: str = field(default="1s", metadata={"check": _fsync_policy})
    retention: float = field(default=7 * 86400.0, metadata={**DURATION, "check": _positive})
    max_spool_bytes: int = field(default=1024**3, metadata={**SIZE, "check": _positive})
    segment_max_bytes: int = field(default=64 * 1024**2, metadata={**SIZE, "check": _positive})
    segment_max_age: float = field(default=3600.0, metadata={**DURATION, "check": _positive})
    # Majordomo format only: tags sent as indexed_metadata too, and the organisation's UUID.
    indexed_tags: tuple[str, ...] = field(default=(), metadata={"parse": parse_names})
    org_id: str = field(default="", metadata={"check": _optional_uuid})


LITELLM_PRICES = ("https://raw.githubusercontent.com/BerriAI/litellm/main/"
                  "model_prices_and_context_window.json")


@dataclass(frozen=True)
class PricingConfig:
    url: str = field(default=LITELLM_PRICES, metadata={"check": _http_url})
    refresh_interval: float = field(default=0.0, metadata=DURATION)  # 0: never by itself


def _ratio(v: float) -> None:
    if not 0.0 <= v <= 1.0:
        raise ValueError("must be between 0 and 1")


def _otlp_headers(v: str) -> None:
    for item in filter(str.strip, v.split(",")):
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ValueError("expected name=value pairs separated by commas, as in "
                             "OTEL_EXPORTER_OTLP_HEADERS (e.g. x-team=search)")


@dataclass(frozen=True)
class TelemetryConfig:
    """OpenTelemetry export; off without an endpoint (here or OTEL_EXPORTER_OTLP_ENDPOINT)."""

    otlp_endpoint: str = field(default="", metadata={"check": _optional_http_url})
    # Plain name=value pairs; headers holding tokens are sealed by `steward telemetry set`.
    otlp_headers: str = field(default="", metadata={"check": _otlp_headers})
    service_name: str = "steward"
    sample_ratio: float = field(default=1.0, metadata={"check": _ratio})


def _unpriced(v: str) -> None:
    if v not in ("deny", "allow"):
        raise ValueError('use "deny" or "allow"')


@dataclass(frozen=True)
class BudgetsConfig:
    # A request under a budget whose cost cannot be bounded (no price for its model, or no
    # output cap in the request or the price table): refused (deny), or let through uncounted.
    unpriced: str = field(default="deny", metadata={"check": _unpriced})


def _database_url(v: str) -> None:
    # The value is never echoed: it may hold a password.
    if v and not re.match(r"postgres(ql)?://", v):
        raise ValueError("expected postgresql://user@host:port/dbname, or empty for the "
                         "home's SQLite file")


@dataclass(frozen=True)
class DatabaseConfig:
    """Where gateway state lives: empty url, the home's SQLite file; else PostgreSQL, shared by
    every node (see steward/postgres.py)."""

    url: str = field(default="", metadata={"check": _database_url})
    password_file: str = ""  # the password, kept out of the URL (a mounted Secret)


@dataclass(frozen=True)
class DashboardConfig:
    # On loopback the dashboard needs no admin token; true asks for one there too. Off
    # loopback one is always needed.
    require_token: bool = False


# The built-in providers: one per built-in wire format, under the format's name. A format
# without a public host (Azure: each customer's resource) is a provider once configured.
DEFAULT_PROVIDERS: dict[str, ProviderConfig] = {
    name: ProviderConfig(name, providers.FORMATS[name].default_base_url)
    for name in providers.BUILT_IN if providers.FORMATS[name].default_base_url
}

_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "bodies": BodiesConfig,
    "metadata": MetadataConfig,
    "pricing": PricingConfig,
    "telemetry": TelemetryConfig,
    "budgets": BudgetsConfig,
    "database": DatabaseConfig,
    "dashboard": DashboardConfig,
}


@dataclass(frozen=True)
class Config:
    home: Path
    server: ServerConfig = ServerConfig()
    providers: Mapping[str, ProviderConfig] = field(default_factory=lambda: dict(DEFAULT_PROVIDERS))
    limits: LimitsConfig = LimitsConfig()
    bodies: BodiesConfig = BodiesConfig()
    metadata: MetadataConfig = MetadataConfig()
    pricing: PricingConfig = PricingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    database: DatabaseConfig = DatabaseConfig()
    dashboard: DashboardConfig = DashboardConfig()

    @property
    def path(self) -> Path:
        return Home(self.home).config

    @property
    def fsync_interval(self) -> float | None:
        """None means never; 0 means after every record."""
        return fsync_interval(self.metadata.fsync)

    @property
    def bodies_fsync_interval(self) -> float | None:
        """None means never; 0 means every body as it is written."""
        return fsync_interval(self.bodies.fsync)

    def bodies_url(self) -> str:
        return self.bodies.url or Home(self.home).bodies.as_uri()


def _coerce(section_cls: type, name: str, raw: Any, where: str) -> Any:
    """Turn a TOML or environment value into the field's type, then run its check."""
    spec = {f.name: f for f in fields(section_cls)}.get(name)
    if spec is None:
        valid = ", ".join(f.name for f in fields(section_cls))
        raise ConfigError(f"{where}: unknown key (valid keys: {valid})")
    meta = spec.metadata
    kind = type(spec.default)
    try:
        if "parse" in meta:
            value = meta["parse"](raw)
        elif kind is bool:
            value = _to_bool(raw)
        elif kind is int:
            if isinstance(raw, bool) or not isinstance(raw, int | str) or not re.fullmatch(
                    r"\s*-?\d+\s*", str(raw)):
                raise ValueError(f"expected a whole number, got {raw!r}")
            value = int(raw)
        elif kind is float:
            try:
                if isinstance(raw, bool):
                    raise TypeError
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"expected a number, got {raw!r}") from None
        else:
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            value = raw
        if "check" in meta:
            meta["check"](value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not true or false")


def _build_section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table")
    values = {k: _coerce(cls, k, v, f"{where}.{k}") for k, v in raw.items()}
    return cls(**values)


def build_config(home: Path, raw: Mapping[str, Any], source: str) -> Config:
    """Validate a raw mapping (file merged with environment) into a Config."""
    known = {*_SECTIONS, "providers"}
    for section in raw:
        if section not in known:
            raise ConfigError(f"{source}: [{section}]: unknown section "
                              f"(valid: {', '.join(sorted(known))})")
    sections = {name: _build_section(cls, raw.get(name, {}), f"{source}: {name}")
                for name, cls in _SECTIONS.items()}
    found = dict(DEFAULT_PROVIDERS)
    raw_providers = raw.get("providers", {})
    if not isinstance(raw_providers, Mapping):
        raise ConfigError(f"{source}: providers: expected a table of providers")
    for name, table in raw_providers.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            raise ConfigError(f"{source}: providers.{name}: provider names are lower-case "
                              "letters, digits, '-' and '_'")
        where = f"{source}: providers.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table")
        base = found.get(name)
        merged = {**({"format": base.format, "base_url": base.base_url} if base else
                     {"format": name} if name in providers.BUILT_IN else {}), **table}
        named = merged.get("format")
        plugin = isinstance(named, str) and named not in providers.BUILT_IN
        fmt = providers.find(named) if plugin else None
        if not merged.get("base_url") and fmt is not None:
            merged["base_url"] = getattr(fmt, "default_base_url", "")  # the plugin's default
        if not merged.get("base_url"):
            raise ConfigError(f"{where}.base_url: required for a provider Steward does not know")
        found[name] = _build_section(ProviderConfig, merged, where)
    for name in providers.BUILT_IN:
        if name in found and found[name].format != name:
            raise ConfigError(f"{source}: providers.{name}.format: the built-in provider "
                              f"{name} always speaks the {name} format")
    limits = sections["limits"]
    if limits.max_buffered_body_bytes < limits.max_body_bytes:
        raise ConfigError(f"{source}: limits.max_buffered_body_bytes "
                          f"({limits.max_buffered_body_bytes} bytes) must be at least "
                          f"limits.max_body_bytes ({limits.max_body_bytes} bytes), or a body "
                          "Steward accepts could never be held")
    return Config(home=home, providers=found, **sections)


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """STEWARD_SERVER__PORT=7700 -> {"server": {"port": "7700"}}."""
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) else v
    return out


def read_raw(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run `steward init` first") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(home: Path, env: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: the file, then STEWARD_<SECTION>__<KEY> overrides."""
    env = os.environ if env is None else env
    path = Home(home).config
    raw = _merge(read_raw(path), env_overrides(env))
    return build_config(home, raw, str(path))


def _split_key(dotted: str, where: str) -> list[str]:
    parts = dotted.split(".")
    if parts[0] == "providers" and len(parts) == 3:
        return parts
    if parts[0] in _SECTIONS and len(parts) == 2:
        return parts
    raise ConfigError(f"{where}: {dotted}: not a setting (examples: server.port, "
                      "limits.max_body_bytes, providers.openai.base_url)")


def set_value(home: Path, dotted: str, text: str) -> Any:
    """Validate and store one dotted key, keeping the file's comments. Returns the stored value."""
    path = Home(home).config
    parts = _split_key(dotted, str(path))
    section_cls = ProviderConfig if parts[0] == "providers" else _SECTIONS[parts[0]]
    value = _coerce(section_cls, parts[-1], text, f"{path}: {dotted}")
    meta = {f.name: f for f in fields(section_cls)}[parts[-1]].metadata
    stored: Any = text if "parse" in meta and isinstance(value, int | float) else value
    if isinstance(stored, tuple):
        stored = list(stored)
    import tomlkit  # here, not at the top: only this command needs it, every command loads config

    try:
        doc = tomlkit.parse(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run `steward init` first") from None
    node: Any = doc
    for part in parts[:-1]:
        if part not in node:
            node[part] = tomlkit.table(is_super_table=part == "providers")
        node = node[part]
    node[parts[-1]] = stored
    candidate = tomllib.loads(tomlkit.dumps(doc))
    build_config(home, candidate, str(path))  # whole-file validation before writing
    write_private(path, tomlkit.dumps(doc))
    return stored if isinstance(value, tuple) else value


_SECRET_FIELD = re.compile(r"(token|secret|password|api_key|headers)$")


def effective_dict(config: Config) -> dict[str, Any]:
    """The config as plain data with credentials masked, for `config show`."""
    def mask(name: str, value: Any) -> Any:
        if isinstance(value, str) and _SECRET_FIELD.search(name) and value:
            return "********"
        if isinstance(value, str):
            value = re.sub(r"(password=)[^&\s]+", r"\1****", value)
            return re.sub(r"//[^/@\s]+@", "//****@", value)
        return value

    out: dict[str, Any] = {}
    for name in _SECTIONS:
        section = getattr(config, name)
        out[name] = {f.name: mask(f.name, getattr(section, f.name)) for f in fields(section)}
    out["providers"] = {
        name: {f.name: mask(f.name, getattr(p, f.name)) for f in fields(p)}
        for name, p in config.providers.items()
    }
    return out


def with_server(config: Config, **changes: Any) -> Config:
    """Command-line overrides (steward run --port) on top of the file."""
    picked = {k: v for k, v in changes.items() if v is not None}
    for k, v in picked.items():
        _coerce(ServerConfig, k, v, f"--{k}")
    return replace(config, server=replace(config.server, **picked))


DEFAULT_TOML = """\
# Steward gateway configuration.
# Every key can be overridden by the environment: STEWARD_<SECTION>__<KEY>,
# e.g. STEWARD_SERVER__PORT=7700. Edit with `steward config set server.port 7700`.

[server]
# host = "127.0.0.1"
# port = 7680
# workers = 1
# admin_host = "127.0.0.1"     # /healthz, /readyz, /metrics; keep it off the public port
# admin_port = 7681            # 0 turns the admin listener off
# drain_timeout = "30s"        # on SIGTERM, how long in-flight requests and streams may finish
# log_format = "auto"          # JSON lines unless on a terminal; or "json" / "text"
# access_log = true            # one line per request; false at rates where logs cost too much

[limits]
# max_body_bytes = "32MiB"     # larger request bodies get 413
# max_buffered_body_bytes = "512MiB"  # request bodies held at once; beyond it: 503, Retry-After
# connect_timeout = "10s"      # upstream TCP/TLS connect
# read_timeout = "600s"        # longest wait for the upstream's response headers (504)
# stream_idle_timeout = "300s" # longest silence between chunks of a response
# max_stream_duration = "1h"   # longest response, start to end
# client_timeout = "60s"       # longest silence from a caller sending its request
# max_headers = 100            # request headers; more: 431
# max_header_bytes = "64KiB"   # total request header size; more: 431
# max_url_bytes = "8KiB"       # path and query; longer: 414
# max_concurrent_per_provider = 512   # upstream requests in flight per provider
# max_queued_per_provider = 1024      # waiting for a slot; beyond it: 503 with Retry-After
# max_concurrent_per_key = 0   # per gateway key; 0: no cap
# max_tags = 32                # X-Majordomo-<name> tags per request
# max_tag_bytes = 512          # bytes per tag value
# upstream_connections = 1000  # pooled connections per provider

[bodies]
# enabled = true
# url = ""                     # file:///p, s3://bucket/pfx, gs://bucket/pfx; "": <home>/bodies
# region = ""                  # S3
# endpoint_url = ""            # S3-compatible services (MinIO, R2) or a GCS emulator
# sse = ""                     # S3 server-side encryption: AES256 or aws:kms
# kms_key_id = ""
# credentials_file = ""        # GCS service-account JSON; empty: application default credentials
# workers = 4                  # parallel uploads
# queue_bytes = "256MiB"       # bodies held in memory; beyond it they wait on local disk
# fsync = "1s"                 # local directory: always (each body) | never | an interval
# retention = "30d"            # local directory: delete days of bodies older; "off" keeps all
# min_free = "auto"            # below this much free disk no body is written locally:
#                              # a size, a percentage, auto (the smaller of 5% and 1GiB), or 0

[metadata]
# upload_url = ""              # empty: records stay in the local spool
# format = "ndjson"            # or "majordomo" for Majordomo's control plane
# batch_size = 500
# interval = "5s"
# fsync = "1s"                 # always | never | an interval
# retention = "7d"             # uploaded segments are kept this long for `steward usage`
# max_spool_bytes = "1GiB"     # a larger upload backlog is logged loudly (never dropped)
# segment_max_bytes = "64MiB"
# segment_max_age = "1h"
# indexed_tags = []            # majordomo format: tags also sent as indexed_metadata
# org_id = ""                  # majordomo format: the organisation's UUID, sent as org_id

[pricing]
# url = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
# refresh_interval = "0"       # e.g. "24h" to refresh the price table by itself

[telemetry]
# otlp_endpoint = ""           # OTLP/HTTP (protobuf), e.g. "http://collector:4318"; "": off
# otlp_headers = ""            # name=value,…; tokens: `steward telemetry set --header` seals them
# service_name = "steward"
# sample_ratio = 1.0           # share of traces exported (metrics count every request)

[budgets]                      # set budgets with `steward budgets set`, limits `steward limits set`
# unpriced = "deny"            # a request under a budget whose cost cannot be bounded: deny|allow

[dashboard]                    # http://<admin_host>:<admin_port>/
# require_token = false        # true: an admin token even on loopback (always off loopback)

# Built-in providers; override base_url to use a proxy or a regional endpoint.
# [providers.openai]
# base_url = "https://api.openai.com/v1"
# [providers.anthropic]
# base_url = "https://api.anthropic.com"
# [providers.gemini]
# base_url = "https://generativelanguage.googleapis.com"
# [providers.bedrock]             # AWS keys: `steward providers set bedrock`
# region = "us-east-1"            # signed for, and {region} in base_url
# credentials = "stored"          # or "default": botocore's chain (instance role, env…)
# [providers.vertex]           # Google Vertex AI: the host follows each path's location
# credentials = "stored"       # `steward providers set vertex --from-file sa.json`; or "default"
# [providers.azure]            # Azure OpenAI: a provider once its resource endpoint is set
# base_url = "https://RESOURCE.openai.azure.com"
# deployments = { prod-4o = "gpt-4o-2024-08-06" }   # deployment -> model priced (optional)

# More upstreams speaking one of the three wire formats, reached with
# `X-Majordomo-Provider: together`:
# [providers.together]
# format = "openai"
# base_url = "https://api.together.xyz/v1"
"""

