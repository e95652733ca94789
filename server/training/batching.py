"""Length-bucketed batches: examples of similar length share a batch, so dynamic padding wastes little."""

from __future__ import annotations

import random
from collections.abc import Sequence

# Sort inside windows of this many batches: enough to group lengths, small enough to keep batches well mixed.
BUCKET_WINDOW_BATCHES = 50


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length inside windows, cut into batches, shuffle batch order. Deterministic for ``rng``."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * BUCKET_WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation order: longest first (peak memory shows up at once), fixed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
