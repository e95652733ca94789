"""Growable slot-indexed storage shared by every PatchTable."""

from __future__ import annotations

import torch


class SlotTensor:
    """A ``[capacity, *shape]`` tensor that doubles its capacity when a slot past the end is written.

    Growth is rare (capacity settles at the resident-table size), and doubling keeps the unused share of memory below
    one half in the worst case and near zero once capacity matches the resident count.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, capacity: int = 8) -> None:
        self.shape = shape
        self.data = torch.zeros((capacity, *shape), device=device, dtype=dtype)

    def ensure(self, slot: int) -> None:
        capacity = self.data.shape[0]
        if slot < capacity:
            return
        while capacity <= slot:
            capacity *= 2
        grown = torch.zeros((capacity, *self.shape), device=self.data.device, dtype=self.data.dtype)
        grown[: self.data.shape[0]] = self.data
        self.data = grown

    def write(self, slot: int, value: torch.Tensor) -> None:
        self.ensure(slot)
        self.data[slot].zero_()
        # Smaller values (a narrower adapter bottleneck, fewer labels) sit in the leading corner; the rest stays 0.
        index = tuple(slice(0, n) for n in value.shape)
        self.data[slot][index] = value.to(device=self.data.device, dtype=self.data.dtype)

    def clear(self, slot: int) -> None:
        if slot < self.data.shape[0]:
            self.data[slot].zero_()

    def widen(self, dim: int, size: int) -> None:
        """Grow one per-slot dimension (zero-padded); used when a wider patch arrives."""
        if self.shape[dim] >= size:
            return
        shape = list(self.shape)
        shape[dim] = size
        grown = torch.zeros((self.data.shape[0], *shape), device=self.data.device, dtype=self.data.dtype)
        index = (slice(None), *(slice(0, n) for n in self.shape))
        grown[index] = self.data
        self.shape = tuple(shape)
        self.data = grown

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()
