"""Concurrency limits: per provider (queued) and per gateway key (refused at once)."""

from __future__ import annotations

import asyncio

from steward.errors import GatewayError


class Limiter:
    """A semaphore with a bounded queue: past it, callers are refused at once."""

    __slots__ = ("max_waiting", "semaphore", "waiting")

    def __init__(self, concurrent: int, queue: int):
        self.semaphore = asyncio.Semaphore(concurrent)
        self.max_waiting = queue
        self.waiting = 0

    async def acquire(self, status: int, message: str) -> None:
        if self.semaphore.locked():
            if self.waiting >= self.max_waiting:
                raise GatewayError(status, message, headers={"Retry-After": "1"})
            self.waiting += 1
            try:
                await self.semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self.semaphore.acquire()

    def release(self) -> None:
        self.semaphore.release()
