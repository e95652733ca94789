"""LRU-with-pinning eviction policy, kept apart from the tables it governs (it knows keys and sizes only)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection


class LRUPolicy:
    """Tracks resident keys in recency order and picks victims to respect a count and a byte budget."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.pinned: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def touch(self, key: str) -> None:
        self._sizes.move_to_end(key)

    def add(self, key: str, size: int) -> None:
        self._sizes[key] = size
        self._sizes.move_to_end(key)

    def remove(self, key: str) -> None:
        self._sizes.pop(key, None)

    def victims(self, incoming_bytes: int, protected: Collection[str]) -> list[str] | None:
        """Keys to evict so one more entry of ``incoming_bytes`` fits; None if impossible without touching
        pinned or protected keys."""
        count, total = len(self._sizes), self.total_bytes
        chosen: list[str] = []
        for key, size in self._sizes.items():
            if count + 1 <= self.max_count and total + incoming_bytes <= self.max_bytes:
                break
            if key in self.pinned or key in protected:
                continue
            chosen.append(key)
            count -= 1
            total -= size
        if count + 1 > self.max_count or total + incoming_bytes > self.max_bytes:
            return None
        return chosen
