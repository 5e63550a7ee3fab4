"""Where Steward keeps its state, every path in it, and creating it with private permissions."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from steward import db
from steward.errors import StewardError
from steward.files import write_private

CONFIG_FILE = "steward.toml"
DB_FILE = "steward.db"


@dataclass(frozen=True)
class Home:
    """Every path Steward keeps on disk, each named here once, so no two modules can disagree
    about where a file lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def db(self) -> Path:
        return self.root / DB_FILE

    @property
    def master_key(self) -> Path:
        """The master key when it is kept in a file, not the OS keyring."""
        return self.root / "master.key"

    @property
    def master_key_new(self) -> Path:
        """A rotation's new key until every secret is re-encrypted with it."""
        return self.root / "master.key.new"

    @property
    def prices(self) -> Path:
        """The active price table, written by `steward pricing update`."""
        return self.root / "prices.json"

    @property
    def spool(self) -> Path:
        """The metadata records' segments (records/spool.py)."""
        return self.root / "spool"

    @property
    def upload_cursor(self) -> Path:
        return self.spool / "cursor.json"

    @property
    def upload_status(self) -> Path:
        return self.spool / "upload-status.json"

    @property
    def uploader_lock(self) -> Path:
        """Held by the one process that uploads the spool."""
        return self.spool / "uploader.lock"

    @property
    def rejected(self) -> Path:
        """Batches the upload endpoint refused for good."""
        return self.spool / "rejected"

    @property
    def dashboard_db(self) -> Path:
        """The dashboard's store of records and rollups, derived from the spool."""
        return self.root / "dashboard.db"

    @property
    def dashboard_cursor(self) -> Path:
        """How far the dashboard has indexed each segment (the uploader's cleanup reads it)."""
        return self.spool / "dashboard-cursor.json"

    @property
    def dashboard_lock(self) -> Path:
        """Held by the one process that indexes the spool for the dashboard."""
        return self.spool / "dashboard.lock"

    @property
    def bodies(self) -> Path:
        """The local body store when bodies.url is empty."""
        return self.root / "bodies"

    @property
    def pending_bodies(self) -> Path:
        """Body documents waiting for the bucket (bodies/writer.py)."""
        return self.root / "pending-bodies"

    @property
    def capture(self) -> Path:
        """The capture journal: bodies on their way to the body writer (bodies/journal.py)."""
        return self.root / "capture"

    @property
    def bodies_status(self) -> Path:
        """The gateway's body writer figures, for `steward bucket status`."""
        return self.root / "bodies-status.json"

    @property
    def metrics(self) -> Path:
        """Prometheus figures shared by several workers."""
        return self.root / "metrics"


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
    if not Home(home).config.exists():
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
    from steward.config import DEFAULT_TOML  # config reads its file from a Home

    paths = Home(home)
    result = InitResult(home=home, first_time=not paths.db.exists())
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
        for sub in (paths.spool, paths.bodies):
            (result.existing if sub.exists() else result.created).append(f"{sub.name}/")
            sub.mkdir(mode=0o700, exist_ok=True)
        config_path = paths.config
        if config_path.exists() and not force:
            result.existing.append(CONFIG_FILE)
        else:
            if config_path.exists():
                os.replace(config_path, config_path.with_suffix(".toml.bak"))
            write_private(config_path, DEFAULT_TOML)
            result.created.append(CONFIG_FILE)
        db_path = paths.db
        (result.existing if db_path.exists() else result.created).append(DB_FILE)
        conn = db.connect(db_path)
        conn.close()
    except PermissionError as exc:
        raise StewardError(f"cannot write to {exc.filename or home}: permission denied") from None
    return result
