"""Held: what a refusing disk could not take waits in memory, in order, within a budget."""

from __future__ import annotations

from steward.held import Held


def test_items_wait_in_order_within_the_budget_and_the_rest_are_counted_lost() -> None:
    held: Held[str] = Held()
    assert held.add("a", 4, budget=10) and held.add("b", 4, budget=10)
    assert not held.add("c", 4, budget=10)  # 12 > 10: not kept
    assert list(held) == ["a", "b"] and held.bytes == 8 and held.lost == 1
    assert held.first() == "a"
    held.drop()
    assert list(held) == ["b"] and held.bytes == 4
    assert held.add("d", 6, budget=10)  # room again once one is written
    held.drop(2)
    assert not held and held.bytes == 0 and held.lost == 1


def test_giving_up_counts_every_held_item_lost_and_returns_them() -> None:
    held: Held[bytes] = Held()
    held.add(b"x", 1, budget=5)
    held.add(b"y", 1, budget=5)
    assert held.give_up() == [b"x", b"y"]
    assert len(held) == 0 and held.bytes == 0 and held.lost == 2
