"""The resident patch table: patches of many tasks stacked on the device, addressed by slot.

Only the engine's worker thread calls into this class (no locking needed); other threads talk to the engine.
An entry is valid only for the exact content hash it was loaded from, so a new version or a rollback can never be
served from a stale slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

import torch

from server.engine.policy import LRUPolicy
from server.errors import PatchCorrupt, ResourceExhausted
from server.metrics import Metrics
from server.model import PatchedModel
from server.patch_check import check_patch
from server.patches.base import MethodConfig, PatchTable
from server.patches.heads import HeadSpec, HeadTable
from server.patches.registry import get_method
from server.store import PatchStore, PatchVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidentEntry:
    name: str
    version: int
    content_sha256: str
    method: str
    method_slot: int
    head_slot: int
    head: HeadSpec
    config: MethodConfig
    nbytes: int


class _SlotAllocator:
    """Hands out slot numbers from 1 (slot 0 is "no patch"), reusing freed ones first."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 1

    def take(self) -> int:
        if self._free:
            return self._free.pop()
        slot, self._next = self._next, self._next + 1
        return slot

    def give_back(self, slot: int) -> None:
        self._free.append(slot)


class ResidentPatches:
    def __init__(
        self, model: PatchedModel, store: PatchStore, max_count: int, max_bytes: int, metrics: Metrics
    ) -> None:
        self.model = model
        self.store = store
        self.metrics = metrics
        self.policy = LRUPolicy(max_count, max_bytes)
        self.entries: dict[str, ResidentEntry] = {}
        backbone = model.backbone
        self.heads = HeadTable(backbone.hidden_size, backbone.device, backbone.dtype)
        self.tables: dict[str, PatchTable] = {}
        self._method_slots: dict[str, _SlotAllocator] = {}
        self._head_slots = _SlotAllocator()

    # ---- pinning -------------------------------------------------------------------------------------------------
    def pin(self, name: str) -> None:
        if name not in self.policy.pinned and len(self.policy.pinned) + 1 >= self.policy.max_count:
            raise ResourceExhausted(
                f"cannot pin {name!r}: {len(self.policy.pinned)} tasks are pinned and the resident table holds "
                f"{self.policy.max_count}; at least one slot must stay evictable"
            )
        self.policy.pinned.add(name)

    def unpin(self, name: str) -> None:
        self.policy.pinned.discard(name)

    def is_pinned(self, name: str) -> bool:
        return name in self.policy.pinned

    def evictable_capacity(self) -> int:
        """How many distinct unpinned tasks one forward pass may touch."""
        return max(1, self.policy.max_count - len(self.policy.pinned))

    # ---- lookup and load -----------------------------------------------------------------------------------------
    def acquire(self, version: PatchVersion, protected: Collection[str]) -> ResidentEntry:
        """The resident entry for exactly ``version`` (loading it on a miss). ``protected``: names the current
        batch already uses, which must not be evicted to make room."""
        entry = self.entries.get(version.name)
        if entry is not None and entry.content_sha256 == version.meta.content_sha256:
            self.policy.touch(version.name)
            self.metrics.patch_cache_hits.inc()
            return entry
        self.metrics.patch_cache_misses.inc()
        if entry is not None:
            self.drop(version.name, reason="stale")
        return self._load(version, protected)

    def _load(self, version: PatchVersion, protected: Collection[str]) -> ResidentEntry:
        started = time.perf_counter()
        tensors, loaded = self.store.load(version.name, version.version)
        if loaded.meta.content_sha256 != version.meta.content_sha256:
            raise PatchCorrupt(f"task {version.name!r} changed while loading; retry")
        try:
            patch = check_patch(self.model.backbone, tensors, loaded.meta)  # before any slot is taken
        except PatchCorrupt as exc:
            raise PatchCorrupt(f"task {version.name!r} v{loaded.version}: {exc}") from None
        method, config, head = get_method(patch.method), patch.config, patch.head
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        victims = self.policy.victims(nbytes, protected)
        if victims is None:
            raise ResourceExhausted(
                f"resident table full: cannot fit {version.name!r} ({nbytes} bytes) without evicting pinned tasks"
            )
        for victim in victims:
            self.drop(victim, reason="capacity")
        table = self.tables.get(method.name)
        if table is None:
            backbone = self.model.backbone
            table = method.new_table(backbone.model, backbone.pooling, backbone.device, backbone.dtype)
            self.tables[method.name] = table
            self._method_slots[method.name] = _SlotAllocator()
        method_slot = self._method_slots[method.name].take()
        head_slot = self._head_slots.take()
        try:
            table.write(method_slot, tensors, config)
            self.heads.write(head_slot, tensors)
        except BaseException:
            table.clear(method_slot)
            self.heads.clear(head_slot)
            self._method_slots[method.name].give_back(method_slot)
            self._head_slots.give_back(head_slot)
            raise
        entry = ResidentEntry(
            name=version.name,
            version=loaded.version,
            content_sha256=loaded.meta.content_sha256,
            method=method.name,
            method_slot=method_slot,
            head_slot=head_slot,
            head=head,
            config=config,
            nbytes=nbytes,
        )
        self.entries[version.name] = entry
        self.policy.add(version.name, nbytes)
        self.metrics.patch_loads.inc()
        self.metrics.patch_load_latency.observe(time.perf_counter() - started)
        self._update_gauges()
        return entry

    def drop(self, name: str, reason: str) -> None:
        entry = self.entries.pop(name, None)
        if entry is None:
            return
        self.policy.remove(name)
        self.tables[entry.method].clear(entry.method_slot)
        self._method_slots[entry.method].give_back(entry.method_slot)
        self.heads.clear(entry.head_slot)
        self._head_slots.give_back(entry.head_slot)
        self.metrics.patch_evictions.labels(reason=reason).inc()
        self._update_gauges()

    @property
    def table_bytes(self) -> int:
        return self.heads.nbytes + sum(t.nbytes for t in self.tables.values())

    def _update_gauges(self) -> None:
        self.metrics.resident_patches.set(len(self.entries))
        self.metrics.resident_bytes.set(self.policy.total_bytes)
        self.metrics.resident_table_bytes.set(self.table_bytes)

    def rows_for(
        self, entries: list[ResidentEntry], counts: list[int]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-row slot indices for a batch of requests (request ``i`` uses ``entries[i]`` for ``counts[i]`` rows):
        method name -> LongTensor[rows] (0 where a row uses another method), and head slots LongTensor[rows]."""
        device = self.model.backbone.device
        repeats = torch.tensor(counts)
        method_rows = {
            method: torch.repeat_interleave(
                torch.tensor([e.method_slot if e.method == method else 0 for e in entries]), repeats
            ).to(device)
            for method in {e.method for e in entries}
        }
        head_rows = torch.repeat_interleave(torch.tensor([e.head_slot for e in entries]), repeats).to(device)
        return method_rows, head_rows
