"""Latency histogram with bounded memory and < 0.1 % relative error (HDR-style buckets).

Values are integer microseconds. Below 2048 µs every value has its own bucket;
above, each power of two is split into 1024 buckets, so a run of any length
costs a few thousand dict entries at most.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_SUB = 1024


def bucket_of(us: int) -> int:
    if us < 2 * _SUB:
        return max(us, 0)
    shift = us.bit_length() - 11
    return (shift << 10) + (us >> shift)


def bucket_low(bucket: int) -> int:
    if bucket < 2 * _SUB:
        return bucket
    shift = (bucket >> 10) - 1
    return (bucket - (shift << 10)) << shift


def bucket_mid(bucket: int) -> float:
    if bucket < 2 * _SUB:
        return float(bucket)
    shift = (bucket >> 10) - 1
    return bucket_low(bucket) + ((1 << shift) - 1) / 2


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def record_us(self, us: int) -> None:
        b = bucket_of(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.total += 1

    def merge(self, counts: Mapping[int, int]) -> None:
        for b, n in counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
            self.total += n

    def percentile_us(self, q: float) -> float:
        """Value at quantile ``q`` (0..100); 0.0 for an empty histogram."""
        return percentile_us(self.counts.items(), q)


def percentile_us(counts: Iterable[tuple[int, int]], q: float) -> float:
    items = sorted(counts)
    total = sum(n for _, n in items)
    if total == 0:
        return 0.0
    # Nearest-rank: the smallest value with at least q% of samples at or below it.
    rank = max(1, -(-int(q * total * 1000) // 100000))
    seen = 0
    for b, n in items:
        seen += n
        if seen >= rank:
            return bucket_mid(b)
    return bucket_mid(items[-1][0])
