"""lbd/stats/counters.py: the hand-written bucket search agrees with bisect everywhere."""

from __future__ import annotations

from bisect import bisect_left

import pytest

from lbd.stats.counters import LATENCY_BUCKETS, Histogram, bucket_of

EDGES = [b for bound in LATENCY_BUCKETS for b in (bound * 0.999, bound, bound * 1.001)]


@pytest.mark.parametrize("seconds", [0.0, -1.0, 1e-9, *EDGES, 1e6, float("inf")])
def test_bucket_of_is_bisect_left(seconds: float) -> None:
    assert bucket_of(seconds) == bisect_left(LATENCY_BUCKETS, seconds)


def test_histogram_counts_each_value_in_its_bucket() -> None:
    h = Histogram()
    for seconds in (0.0005, 0.001, 0.0011, 29.0, 31.0):
        h.observe(seconds)
    assert h.counts[0] == 2 and h.counts[1] == 1
    assert h.counts[len(LATENCY_BUCKETS) - 1] == 1 and h.counts[-1] == 1
    assert h.count == 5
