"""Liveness-based placement of buffers in one arena.

Each buffer lives over an interval of schedule steps [first, last]. Two
buffers may share bytes only when their intervals do not overlap. Placement
is greedy by size (largest first, each at the lowest offset that fits beside
the already placed buffers it overlaps in time), a simple heuristic that
packs training graphs well.
"""

from __future__ import annotations

from dataclasses import dataclass

ALIGNMENT = 64  # bytes: a cache line, and enough for AVX-512 loads


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass
class Interval:
    first: int
    last: int
    nbytes: int

    def overlaps(self, other: Interval) -> bool:
        return self.first <= other.last and other.first <= self.last


def place(intervals: list) -> tuple:
    """Offsets (aligned) for each interval, and the arena size in bytes."""
    order = sorted(range(len(intervals)), key=lambda i: (-intervals[i].nbytes, intervals[i].first))
    offsets = [0] * len(intervals)
    placed: list = []  # (offset, end, interval)
    for index in order:
        interval = intervals[index]
        size = align_up(max(interval.nbytes, 1))
        busy = sorted((start, end) for start, end, other in placed if other.overlaps(interval))
        offset = 0
        for start, end in busy:
            if offset + size <= start:
                break
            offset = max(offset, end)
        offsets[index] = offset
        placed.append((offset, offset + size, interval))
    total = max((end for _, end, _ in placed), default=0)
    return offsets, total
