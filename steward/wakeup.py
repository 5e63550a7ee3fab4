"""Background loops that sleep for a while unless something wakes them sooner."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_wake(event: asyncio.Event, seconds: float) -> None:
    """Return when the event is set or the time is up, and clear the event.

    asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives just as
    the event is set, and a stop() that cancels the loop would then wait for it forever."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    event.clear()
