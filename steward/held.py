"""What a refusing disk could not take, kept in memory in order until it can.

The spool (records) and the body writer (documents) both fall back to this when their disk
fails: requests go on, and nothing is lost unless the memory budget runs out too.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Held(Generic[T]):
    """Items in arrival order with their sizes in bytes; past the budget an item is not kept
    but counted in `lost`, for the owner to say so loudly."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self.bytes = 0
        self.lost = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return (item for item, _ in self._items)

    def add(self, item: T, size: int, budget: int) -> bool:
        """Keep item unless that would take the bytes held past budget; False: it is lost."""
        if self.bytes + size > budget:
            self.lost += 1
            return False
        self._items.append((item, size))
        self.bytes += size
        return True

    def first(self) -> T:
        return self._items[0][0]

    def drop(self, count: int = 1) -> None:
        """The oldest count items are written: forget them."""
        for _ in range(count):
            self.bytes -= self._items.popleft()[1]

    def give_up(self) -> list[T]:
        """At shutdown: every item still held is lost; returns them for a last word."""
        items = list(self)
        self.lost += len(items)
        self._items.clear()
        self.bytes = 0
        return items
