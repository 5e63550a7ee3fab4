"""Body stores: one small interface, three implementations (local directory, S3, GCS).

Every method is blocking and is called from worker threads, never from the event loop.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from steward.bodies.packs import Packs, split_key
from steward.errors import StewardError
from steward.files import sync_filesystem, write_atomic

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "gzip"


class BodyStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...
    def flush(self) -> None:
        """Make every put so far durable (a no-op where put already is)."""


def _join(prefix: str, key: str) -> str:
    return f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key


@dataclass
class LocalStore:
    """Bodies of the day layout are appended to packs (steward/bodies/packs.py: a small file each
    cost a 4 KiB block); other keys, and bodies from before packing, are plain files.

    durable=False: nothing is fsynced as it is written; flush() then syncs the filesystem once
    for all of it (two fsyncs per object were half the CPU that body capture cost)."""

    root: Path
    durable: bool = True
    packs: Packs = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.packs = Packs(self.root)

    def put(self, key: str, data: bytes) -> None:
        packed = split_key(key)
        if packed is not None:
            self.packs.put(*packed, data, durable=self.durable)
            return
        path = self.root / key
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data, durable=self.durable)

    def flush(self) -> None:
        if not self.durable:
            sync_filesystem(self.root)

    def get(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()  # a plain file: not packed, or from before
        except FileNotFoundError:
            packed = split_key(key)
            if packed is None:
                raise
            return self.packs.get(*packed)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)
        packed = split_key(key)
        if packed is not None:
            self.packs.delete(*packed, durable=self.durable)

    def locate(self, name: str, day: datetime.date) -> str | None:
        """The key of a body by its name and day, under whichever gateway key it is."""
        try:
            with os.scandir(self.root) as entries:
                key_ids = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return None
        for key_id in key_ids:
            where = f"{key_id}/{day:%Y/%m/%d}"
            if os.path.isfile(os.path.join(self.root, where, name)) or self.packs.find(where,
                                                                                     name):
                return f"{where}/{name}"
        return None

    def url(self, key: str) -> str:
        return (self.root / key).as_uri()

    # The layout is <root>/<key id>/<yyyy>/<mm>/<dd>/<request id>.json.gz (bodies.object_key),
    # so a day of one key is one directory: retention removes whole directories.

    def days(self) -> Iterator[tuple[str, datetime.date, Path]]:
        """(key id, day, directory) for every day directory, in no particular order."""
        for key_dir in _subdirs(self.root):
            for year in _subdirs(key_dir):
                for month in _subdirs(year):
                    for day in _subdirs(month):
                        try:
                            when = datetime.date(int(year.name), int(month.name),
                                                 int(day.name))
                        except ValueError:
                            continue  # not ours: never touched
                        yield key_dir.name, when, day

    def sweep(self, retention: float, now: float) -> tuple[int, int]:
        """Delete the days whose every body is older than `retention` seconds: a day D goes
        once D+1 00:00 UTC is that far in the past. Returns (days, bodies) removed. Another
        process sweeping at the same time is skipped, not raced."""
        cutoff = datetime.datetime.fromtimestamp(now - retention, datetime.UTC).date()
        removed_days = removed_files = 0
        with _exclusive(self.root / SWEEP_LOCK) as locked:
            if not locked:
                return 0, 0
            for _, when, directory in list(self.days()):
                if when >= cutoff:
                    continue
                removed_files += self.packs.usage(directory).bodies
                shutil.rmtree(directory, ignore_errors=True)
                removed_days += 1
                for parent in (directory.parent, directory.parent.parent,
                               directory.parent.parent.parent):
                    with contextlib.suppress(OSError):  # only while empty
                        parent.rmdir()
        return removed_days, removed_files

    def usage(self) -> list[dict[str, Any]]:
        """Per key and day: bodies and their bytes, files and the disk blocks they occupy."""
        rows = []
        for key_id, when, directory in self.days():
            use = self.packs.usage(directory)
            rows.append({"day": when.isoformat(), "key": key_id, "bodies": use.bodies,
                         "bytes": use.bytes, "files": use.files, "disk_bytes": use.disk_bytes})
        return sorted(rows, key=lambda r: (r["day"], r["key"]))


SWEEP_LOCK = ".sweep.lock"
LIFECYCLE_ID = "steward-bodies-retention"


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any
    extra: dict[str, str]

    # 8 MiB parts: objects above it go up as multipart uploads, so memory per upload is bounded.
    PART = 8 * 1024 * 1024

    def put(self, key: str, data: bytes) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client.upload_fileobj(
            io.BytesIO(data), self.bucket, _join(self.prefix, key),
            ExtraArgs={"ContentType": CONTENT_TYPE, "ContentEncoding": CONTENT_ENCODING,
                       **self.extra},
            Config=TransferConfig(multipart_threshold=self.PART, multipart_chunksize=self.PART,
                                  use_threads=False))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket,
                                      Key=_join(self.prefix, key))["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=_join(self.prefix, key))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{_join(self.prefix, key)}"

    def lifecycle_rule(self, days: int) -> dict[str, Any]:
        """The S3 rule that expires bodies under our prefix, as bodies.retention does locally."""
        return {"ID": LIFECYCLE_ID, "Status": "Enabled",
                "Filter": {"Prefix": _join(self.prefix, "")},
                "Expiration": {"Days": days},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}

    def apply_lifecycle(self, days: int) -> None:
        """Set our rule, keeping every other rule the bucket has."""
        try:
            rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        rules = [r for r in rules if r.get("ID") != LIFECYCLE_ID] + [self.lifecycle_rule(days)]
        self.client.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})

    def flush(self) -> None:
        """An object is durable once S3 has acknowledged it."""


@dataclass
class GCSStore:
    bucket: Any  # google.cloud.storage.Bucket
    prefix: str

    def put(self, key: str, data: bytes) -> None:
        blob = self.bucket.blob(_join(self.prefix, key))
        blob.content_encoding = CONTENT_ENCODING
        # Large bodies go up as resumable uploads in 8 MiB chunks.
        if len(data) > 8 * 1024 * 1024:
            blob.chunk_size = 8 * 1024 * 1024
        blob.upload_from_string(data, content_type=CONTENT_TYPE)

    def get(self, key: str) -> bytes:
        # raw_download: the stored gzip bytes, not GCS's decompressive transcoding.
        return self.bucket.blob(_join(self.prefix, key)).download_as_bytes(raw_download=True)

    def delete(self, key: str) -> None:
        self.bucket.blob(_join(self.prefix, key)).delete()

    def url(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{_join(self.prefix, key)}"

    def lifecycle_rule(self, days: int) -> dict[str, Any]:
        """The GCS rule that deletes bodies under our prefix, as bodies.retention does locally."""
        return {"action": {"type": "Delete"},
                "condition": {"age": days, "matchesPrefix": [_join(self.prefix, "")]}}

    def apply_lifecycle(self, days: int) -> None:
        """Set our rule (the Delete rule on our prefix), keeping every other rule."""
        self.bucket.reload()
        ours = self.lifecycle_rule(days)
        prefix = ours["condition"]["matchesPrefix"]
        rules = [dict(r) for r in self.bucket.lifecycle_rules
                 if not (r.get("action", {}).get("type") == "Delete"
                         and r.get("condition", {}).get("matchesPrefix") == prefix)]
        self.bucket.lifecycle_rules = [*rules, ours]
        self.bucket.patch()

    def flush(self) -> None:
        """An object is durable once GCS has acknowledged it."""


@dataclass(frozen=True)
class StoreSettings:
    url: str
    region: str = ""
    endpoint_url: str = ""
    sse: str = ""
    kms_key_id: str = ""
    credentials_file: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = None
    fsync_each: bool = True  # local directory: fsync every object as it is written


def object_url(url: str) -> Callable[[str], str]:
    """A body's full URL from its key, as the store for bodies.url names it, without opening
    a client: what the serving worker writes into the record."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path))
        return lambda key: (root / key).as_uri()
    base, prefix = f"{parsed.scheme}://{parsed.netloc}", parsed.path.lstrip("/")
    return lambda key: f"{base}/{_join(prefix, key)}"


def open_store(settings: StoreSettings) -> BodyStore:
    parsed = urlparse(settings.url)
    prefix = parsed.path.lstrip("/")
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)), durable=settings.fsync_each)
    if parsed.scheme == "s3":
        import boto3

        session = boto3.session.Session(aws_access_key_id=settings.access_key_id,
                                        aws_secret_access_key=settings.secret_access_key,
                                        region_name=settings.region or None)
        from botocore.config import Config as BotoConfig

        # Steward retries with its own backoff (and spills to disk), so boto3 fails fast.
        client = session.client("s3", endpoint_url=settings.endpoint_url or None,
                                config=BotoConfig(connect_timeout=10, read_timeout=60,
                                                  retries={"max_attempts": 2,
                                                           "mode": "standard"}))
        extra: dict[str, str] = {}
        if settings.sse:
            extra["ServerSideEncryption"] = settings.sse
            if settings.sse == "aws:kms" and settings.kms_key_id:
                extra["SSEKMSKeyId"] = settings.kms_key_id
        return S3Store(parsed.netloc, prefix, client, extra)
    if parsed.scheme == "gs":
        from google.cloud import storage

        if settings.endpoint_url:
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="steward", credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": settings.endpoint_url})
        elif settings.credentials_file:
            client = storage.Client.from_service_account_json(settings.credentials_file)
        else:
            client = storage.Client()
        return GCSStore(client.bucket(parsed.netloc), prefix)
    raise StewardError(f"bodies.url {settings.url!r}: use file:///path, s3://bucket[/prefix] "
                       "or gs://bucket[/prefix]")
