"""Where Steward keeps its state, and creating it with private permissions."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from steward import db
from steward.config import CONFIG_FILE, DEFAULT_TOML, write_private
from steward.errors import StewardError

DB_FILE = "steward.db"
SUBDIRS = ("spool", "bodies")


def resolve_home(explicit: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """--home, then $STEWARD_HOME, then systemd's $STATE_DIRECTORY, then the user data dir."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit.expanduser().absolute()
    for var in ("STEWARD_HOME", "STATE_DIRECTORY"):
        if env.get(var):
            # systemd may pass several colon-separated state directories; the first is ours.
            return Path(env[var].split(":")[0]).expanduser().absolute()
    return Path(platformdirs.user_data_dir("steward", appauthor=False))


def require_home(home: Path) -> Path:
    """Fail with a clear line when the home has not been initialised."""
    if not (home / CONFIG_FILE).exists():
        raise StewardError(f"{home} is not a Steward home: run `steward init --home {home}`")
    return home


@dataclass
class InitResult:
    home: Path
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    first_time: bool = False
    warnings: list[str] = field(default_factory=list)


def init_home(home: Path, force: bool = False) -> InitResult:
    """Create what is missing; with force, reset steward.toml (keeping a .bak). Never drops data."""
    result = InitResult(home=home, first_time=not (home / DB_FILE).exists())
    try:
        try:
            home.mkdir(mode=0o700, parents=True)
            os.chmod(home, 0o700)  # ours: exactly 0700 whatever the umask
        except FileExistsError:
            # Not ours (an operator's directory, a shared mount, /tmp): never change its mode,
            # only say so when others can read it.
            if not home.is_dir():
                raise StewardError(f"{home} exists and is not a directory") from None
            mode = stat.S_IMODE(home.stat().st_mode)
            if mode & 0o044:
                result.warnings.append(
                    f"{home} is readable by other users (mode {mode:04o}); Steward's own files "
                    f"in it are private, but consider `chmod 700 {home}`")
        for name in SUBDIRS:
            sub = home / name
            (result.existing if sub.exists() else result.created).append(f"{name}/")
            sub.mkdir(mode=0o700, exist_ok=True)
        config_path = home / CONFIG_FILE
        if config_path.exists() and not force:
            result.existing.append(CONFIG_FILE)
        else:
            if config_path.exists():
                os.replace(config_path, config_path.with_suffix(".toml.bak"))
            write_private(config_path, DEFAULT_TOML)
            result.created.append(CONFIG_FILE)
        db_path = home / DB_FILE
        (result.existing if db_path.exists() else result.created).append(DB_FILE)
        conn = db.connect(db_path)
        conn.close()
    except PermissionError as exc:
        raise StewardError(f"cannot write to {exc.filename or home}: permission denied") from None
    return result
