"""Seeded, stratified subsampling of training data (the study's "data fraction" control).

Stratified so that a small fraction measures "less data", not "a different label distribution": with 1% of a
skewed task, plain random sampling can drop a class entirely, and the result would mix two effects.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence

from tasks.errors import DataError
from tasks.types import Example

REGRESSION_BINS = 5
"""Regression labels are stratified by rank into this many equal-count bins (quintiles): a 5% sample of STS-B then
keeps the spread of scores from 0 to 5 instead of, by chance, bunching in the middle. Rank bins rather than
equal-width bins because scores are skewed and often tied, and equal-width bins could be empty."""


def subsample(examples: Sequence[Example], fraction: float, seed: int, stratify: bool = True) -> list[Example]:
    """Return about ``fraction`` of ``examples``, chosen with ``random.Random(seed)``, in their original order.

    The total is ``round(len(examples) * fraction)`` (at least 1). With ``stratify``, each class (classification) or
    rank bin (regression) gets its share by largest remainder, so every class is within one example of its exact
    proportion, and every class keeps at least one example even if that exceeds the total. The same inputs always
    give the same output; ``fraction == 1.0`` returns every example.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
        raise DataError(f"data fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0 or not examples:
        return list(examples)
    rng = random.Random(seed)
    total = max(1, math.floor(len(examples) * fraction + 0.5))
    if not stratify:
        chosen = rng.sample(range(len(examples)), total)
    else:
        chosen = []
        strata = _strata(examples)
        for stratum, count in zip(strata, _allocate([len(s) for s in strata], total), strict=True):
            chosen.extend(rng.sample(stratum, count))
    return [examples[i] for i in sorted(chosen)]


def _strata(examples: Sequence[Example]) -> list[list[int]]:
    """Indices grouped by class, or by regression rank bin, in a deterministic order."""
    kinds = {type(example.label) is str for example in examples}
    if len(kinds) > 1:
        raise DataError("cannot subsample examples that mix class-name and numeric labels")
    if kinds == {True}:
        groups: dict[Hashable, list[int]] = {}
        for index, example in enumerate(examples):
            groups.setdefault(example.label, []).append(index)
        return [groups[label] for label in sorted(groups, key=str)]
    # Sort by (label, index) so ties are broken by position, never by chance; then cut into equal-count bins.
    ranked = sorted(range(len(examples)), key=lambda i: (float(examples[i].label), i))
    bins = min(REGRESSION_BINS, len(ranked))
    return [ranked[len(ranked) * b // bins : len(ranked) * (b + 1) // bins] for b in range(bins)]


def _allocate(sizes: list[int], total: int) -> list[int]:
    """Largest-remainder shares of ``total`` proportional to ``sizes``, each at least 1 and at most its size."""
    population = sum(sizes)
    exact = [size * total / population for size in sizes]
    counts = [math.floor(share) for share in exact]
    # Ties go to the earlier stratum, so the allocation never depends on the seed.
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return [min(size, max(1, count)) for size, count in zip(sizes, counts, strict=True)]
