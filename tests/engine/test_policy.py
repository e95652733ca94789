from __future__ import annotations

from server.engine.policy import LRUPolicy


def test_victims_in_lru_order_respecting_pins_and_protection() -> None:
    policy = LRUPolicy(max_count=3, max_bytes=1000)
    for key in ("a", "b", "c"):
        policy.add(key, 100)
    policy.touch("a")  # order now b, c, a
    assert policy.victims(100, protected=()) == ["b"]
    policy.pinned.add("b")
    assert policy.victims(100, protected=()) == ["c"]
    assert policy.victims(100, protected={"c"}) == ["a"]
    assert policy.victims(100, protected={"c", "a"}) is None


def test_byte_budget_evicts_several() -> None:
    policy = LRUPolicy(max_count=10, max_bytes=300)
    for key in ("a", "b", "c"):
        policy.add(key, 100)
    assert policy.victims(250, protected=()) == ["a", "b", "c"]
    assert policy.victims(301, protected=()) is None
