"""pyengine.graph.planner.place: liveness-based buffer placement."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine.graph.planner import ALIGNMENT, Interval, align_up, place


def _random_intervals(rng, n, steps=40, max_bytes=5000):
    out = []
    for _ in range(n):
        first = int(rng.integers(-1, steps))
        last = int(rng.integers(first, min(first + 12, steps + 1) + 1))
        nbytes = int(rng.integers(0, max_bytes)) if rng.random() < 0.9 else int(rng.integers(1, 8))
        out.append(Interval(first, last, nbytes))
    return out


def _check_valid(intervals, offsets, total):
    assert len(offsets) == len(intervals)
    for offset, iv in zip(offsets, intervals):
        assert offset >= 0 and offset % ALIGNMENT == 0
        assert offset + iv.nbytes <= total
    for i, a in enumerate(intervals):
        for j in range(i + 1, len(intervals)):
            b = intervals[j]
            if a.first <= b.last and b.first <= a.last:  # alive at a common step
                end_a = offsets[i] + max(a.nbytes, 1)
                end_b = offsets[j] + max(b.nbytes, 1)
                assert end_a <= offsets[j] or end_b <= offsets[i], (i, j, a, b, offsets[i], offsets[j])


def _peak_live(intervals):
    steps = {t for iv in intervals for t in (iv.first, iv.last)}
    return max((sum(align_up(max(iv.nbytes, 1)) for iv in intervals if iv.first <= t <= iv.last)
                for t in steps), default=0)


@pytest.mark.parametrize("seed", range(12))
def test_random_intervals_never_overlap_in_memory(seed):
    rng = np.random.default_rng(seed)
    intervals = _random_intervals(rng, int(rng.integers(5, 60)))
    offsets, total = place(intervals)
    _check_valid(intervals, offsets, total)
    # bounds: at least the busiest step, at most everything side by side
    assert _peak_live(intervals) <= total <= sum(align_up(max(iv.nbytes, 1)) for iv in intervals)
    assert total % ALIGNMENT == 0
    # the arena is tight: some buffer ends exactly at `total`
    assert any(o + align_up(max(iv.nbytes, 1)) == total for o, iv in zip(offsets, intervals))


def test_random_intervals_with_many_steps_reuse_memory():
    rng = np.random.default_rng(100)
    intervals = _random_intervals(rng, 200, steps=300)
    offsets, total = place(intervals)
    _check_valid(intervals, offsets, total)
    assert total < 0.5 * sum(iv.nbytes for iv in intervals)


def test_disjoint_lifetimes_reuse_memory():
    # a chain: each buffer dies before the next is born
    intervals = [Interval(2 * i, 2 * i + 1, 1000) for i in range(6)]
    offsets, total = place(intervals)
    _check_valid(intervals, offsets, total)
    assert total < sum(iv.nbytes for iv in intervals)
    assert total == align_up(1000) == 1024
    assert offsets == [0] * 6


def test_activation_chain_needs_two_buffers():
    # x_i is read by step i and x_{i+1} written there: neighbours overlap, others do not
    intervals = [Interval(i, i + 1, 4096) for i in range(10)]
    offsets, total = place(intervals)
    _check_valid(intervals, offsets, total)
    assert total == 2 * 4096


def test_all_overlapping_buffers_are_packed_side_by_side():
    sizes = [100, 64, 1, 300, 65]
    intervals = [Interval(0, 5, n) for n in sizes]
    offsets, total = place(intervals)
    _check_valid(intervals, offsets, total)
    assert total == sum(align_up(n) for n in sizes) == 128 + 64 + 64 + 320 + 128
    assert sorted(offsets) == sorted(set(offsets))


def test_touching_lifetimes_count_as_overlapping():
    # written at step 3 while the other is still read at step 3: they must not share bytes
    a, b = Interval(0, 3, 256), Interval(3, 6, 256)
    assert a.overlaps(b) and b.overlaps(a)
    assert not Interval(0, 2, 1).overlaps(Interval(3, 4, 1))
    offsets, total = place([a, b])
    assert total == 512 and sorted(offsets) == [0, 256]


def test_small_buffer_fills_a_gap():
    # big0 [0,1] and big1 [4,5] share offset 0; a long-lived small buffer goes above;
    # a short one alive at [2,3] reuses offset 0
    intervals = [Interval(0, 1, 4096), Interval(4, 5, 4096), Interval(0, 5, 64), Interval(2, 3, 1000)]
    offsets, total = place(intervals)
    _check_valid(intervals, offsets, total)
    assert offsets[0] == offsets[1] == offsets[3] == 0
    assert offsets[2] == 4096
    assert total == 4096 + 64


def test_zero_byte_and_empty_inputs():
    assert place([]) == ([], 0)
    offsets, total = place([Interval(0, 0, 0), Interval(0, 0, 0)])
    assert total == 2 * ALIGNMENT and sorted(offsets) == [0, ALIGNMENT]


def test_align_up():
    assert [align_up(n) for n in (0, 1, 63, 64, 65, 128, 129)] == [0, 64, 64, 64, 128, 128, 192]
    assert align_up(5, 8) == 8 and ALIGNMENT == 64


def test_place_is_deterministic():
    rng = np.random.default_rng(7)
    intervals = _random_intervals(rng, 50)
    assert place(intervals) == place(list(intervals))
