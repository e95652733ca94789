"""The soak benchmark's drift rule: a pool filling up to its bound passes, steady growth (a leak) does not."""

from __future__ import annotations

from bench.soak import half_maxima


def timeline(counts: list[int]) -> tuple[dict[str, int], list[tuple[float, dict[str, int]]], dict[str, int]]:
    """Warm-up sample at 10 s, one sample every 5 s, final sample 5 s after the last."""
    samples = [(10.0 + 5 * (i + 1), {"threads": n}) for i, n in enumerate(counts[1:-1])]
    return {"threads": counts[0]}, samples, {"threads": counts[-1]}


def test_pool_growth_after_warm_up_is_not_a_leak() -> None:
    warm, samples, final = timeline([32, 33, 37, 37, 37, 37, 37, 37, 37, 37])  # a new peak of concurrency, then flat
    first, second = half_maxima(warm, samples, final, "threads", 10.0, 55.0)
    assert (first, second) == (37, 37)


def test_steady_growth_is_caught() -> None:
    warm, samples, final = timeline([32, 33, 34, 35, 36, 37, 38, 39, 40, 41])  # one thread more every 5 s
    first, second = half_maxima(warm, samples, final, "threads", 10.0, 55.0)
    assert second - first >= 5  # above THREAD_SLACK: the soak reports it
