"""`steward spool flush`: upload every pending record now, and wait until it is done.

When no gateway holds the uploader lock the records are uploaded from here; otherwise the
gateway that holds it is woken (its admin /flush) and the backlog watched until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from steward import db
from steward.config import Config
from steward.errors import StewardError
from steward.home import Home
from steward.records.formats import UPLOAD_TOKEN, make_uploader
from steward.records.upload import backlog, lock_is_free
from steward.secrets import master_key, provider_keys

POLL_SECONDS = 0.2  # how often the running gateway's progress is looked at


def flush(config: Config, timeout: float) -> None:
    """Returns once no record is pending; raises saying why when that is not so by timeout."""
    if not config.metadata.upload_url:
        raise StewardError("no upload endpoint: set one with `steward upload set URL`")
    home = Home(config.home)
    deadline = time.monotonic() + timeout
    if lock_is_free(home):  # no gateway is uploading: do it here
        with contextlib.closing(db.open_home(config.home)) as conn:
            vault, _ = master_key.open_vault(config.home, conn)
            token = provider_keys.get_secret(conn, vault, UPLOAD_TOKEN)
        asyncio.run(_drain(config, token, deadline))
    else:  # a running gateway holds the uploader: wake it and watch the backlog drain
        import httpx  # here: it costs every `steward` command a third of a second to import

        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"http://{config.server.admin_host}:{config.server.admin_port}/flush",
                       timeout=5)
        while backlog(home)["pending_records"] and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
    left = backlog(home)
    if left["pending_records"]:
        raise StewardError(f"{left['pending_records']} record(s) still pending after "
                           f"{timeout:g}s; last error: {left['last_error'] or 'none'}")


async def _drain(config: Config, token: str | None, deadline: float) -> None:
    uploader = make_uploader(config, token)
    try:
        while time.monotonic() < deadline:
            delay = await uploader.step()
            if delay is None:
                return
            if delay > 0:
                raise StewardError(f"upload failed: {uploader.status['last_error']}")
    finally:
        await uploader.client.aclose()
