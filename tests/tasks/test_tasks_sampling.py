"""Data-fraction subsampling: seeded, deterministic, stratified."""

from __future__ import annotations

from collections import Counter

import pytest

from tasks import DataError, Example, subsample

SIZES = {"a": 1000, "b": 90, "c": 7}


def skewed() -> list[Example]:
    # Interleave classes so "original order" is a real check.
    out = []
    for i in range(max(SIZES.values())):
        for label, size in SIZES.items():
            if i < size:
                out.append(Example(f"{label}{i}", None, label))
    return out


def positions(sample: list[Example], population: list[Example]) -> list[int]:
    index = {id(example): i for i, example in enumerate(population)}
    return [index[id(example)] for example in sample]


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    data = skewed()
    assert subsample(data, 0.1, seed=3) == subsample(data, 0.1, seed=3)
    assert subsample(data, 0.1, seed=3) != subsample(data, 0.1, seed=4)
    assert subsample(data, 0.1, seed=3, stratify=False) != subsample(data, 0.1, seed=4, stratify=False)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.33, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_keeps_proportions(fraction: float, seed: int) -> None:
    data = skewed()
    sample = subsample(data, fraction, seed)
    counts = Counter(example.label for example in sample)
    assert set(counts) == set(SIZES)  # every class survives, even "c" at 1%
    for label, size in SIZES.items():
        assert abs(counts[label] - size * fraction) <= 1 or counts[label] == 1
    assert abs(len(sample) - len(data) * fraction) <= 1 + len(SIZES)  # the at-least-one rule may add a few
    kept = positions(sample, data)
    assert kept == sorted(kept) and len(set(kept)) == len(kept)  # original order, no duplicates


def test_unstratified_total_is_exact() -> None:
    data = skewed()
    sample = subsample(data, 0.25, seed=0, stratify=False)
    assert len(sample) == round(len(data) * 0.25)
    kept = positions(sample, data)
    assert kept == sorted(kept)


def test_regression_keeps_the_score_spread() -> None:
    data = [Example(f"t{i}", None, (i * 37 % 101) / 20) for i in range(500)]  # scores 0..5, shuffled order
    sample = subsample(data, 0.02, seed=7)
    assert len(sample) == 10
    scores = sorted(float(example.label) for example in sample)
    # rank quintiles: two from each fifth of the score range
    assert [sum(lo <= s < lo + 1.01 for s in scores) for lo in (0.0, 1.01, 2.02, 3.03, 4.04)] == [2, 2, 2, 2, 2]
    assert subsample(data, 0.02, seed=7) == sample


def test_fraction_one_is_identity_and_tiny_fraction_keeps_one_per_class() -> None:
    data = skewed()
    assert subsample(data, 1.0, seed=0) == data
    assert subsample(data, 1, seed=0) == data
    assert Counter(e.label for e in subsample(data, 1e-9, seed=0)) == {"a": 1, "b": 1, "c": 1}
    assert subsample([], 0.5, seed=0) == []


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_bad_fraction(fraction: object) -> None:
    with pytest.raises(DataError, match="data fraction must be"):
        subsample(skewed(), fraction, seed=0)  # type: ignore[arg-type]


def test_mixed_label_kinds_rejected() -> None:
    with pytest.raises(DataError, match="mix class-name and numeric labels"):
        subsample([Example("a", None, "x"), Example("b", None, 1.0)], 0.5, seed=0)
