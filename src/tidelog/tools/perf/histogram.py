"""A log-linear latency histogram with HdrHistogram's bucket layout, in microseconds.

Vocabulary: a value `v` (a latency in microseconds) lands in bucket `index(v)`. Below 2,048
every value has its own bucket (exact to the microsecond); above, each power of two is cut
into 1,024 equal sub-buckets, so a bucket's width is at most 1/1,024 of its value: three
significant digits, the precision HdrHistogram is usually run with. Buckets are kept sparse
(a dict index -> count), so a histogram that saw latencies from 50 us to 3 s holds a few
hundred entries, and merging histograms from several processes is adding dicts.

Why not the `hdrhistogram` package: it works (same layout, standard encoding), but its
`record_value` costs about 0.75 us in pure Python against 0.11 us here, and the tool records
three or more values per message on a machine whose cores the broker needs. Workers record
into a `Recorder` (a table lookup and a list item per value, about half of `record`) and
send `Histogram` snapshots of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from operator import itemgetter

SUB_BUCKET_BITS = 11  # 2,048 exact values, then 1,024 sub-buckets per power of two
_EXACT = 1 << SUB_BUCKET_BITS
_HALF_BITS = SUB_BUCKET_BITS - 1
_HALF_MASK = (1 << _HALF_BITS) - 1

# percentiles printed and stored under the original tool's names
SUMMARY_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("50th", 50.0), ("75th", 75.0), ("90th", 90.0), ("95th", 95.0),
    ("99th", 99.0), ("999th", 99.9), ("9999th", 99.99),
)


def index(value: int) -> int:
    """The bucket of `value` (negative values count as 0)."""
    if value < _EXACT:
        return value if value > 0 else 0
    shift = value.bit_length() - SUB_BUCKET_BITS
    return (shift << _HALF_BITS) + (value >> shift)


def lowest(idx: int) -> int:
    """The smallest value that lands in bucket `idx`."""
    if idx < _EXACT:
        return idx
    shift = (idx >> _HALF_BITS) - 1
    return ((idx & _HALF_MASK) | (1 << _HALF_BITS)) << shift


def highest(idx: int) -> int:
    """The largest value that lands in bucket `idx` (what HdrHistogram reports)."""
    return lowest(idx + 1) - 1


class Histogram:
    """Counts per bucket plus the exact sum, for the mean. Written by one thread only; a
    reader in another thread takes `copy()` (one C-level dict copy under the GIL)."""

    __slots__ = ("counts", "sum")

    def __init__(self, counts: Mapping[int, int] | None = None, total_sum: int = 0) -> None:
        self.counts: dict[int, int] = dict(counts) if counts else {}
        self.sum = total_sum

    def record(self, value: int) -> None:
        if value < _EXACT:
            idx = value if value > 0 else 0
        else:
            shift = value.bit_length() - SUB_BUCKET_BITS
            idx = (shift << _HALF_BITS) + (value >> shift)
        counts = self.counts
        counts[idx] = counts.get(idx, 0) + 1
        self.sum += value if value > 0 else 0

    def copy(self) -> Histogram:
        return Histogram(self.counts.copy(), self.sum)

    def add(self, other: Histogram) -> None:
        counts = self.counts
        if not counts:
            counts.update(other.counts)
            self.sum += other.sum
            return
        for idx, n in other.counts.items():
            counts[idx] = counts.get(idx, 0) + n
        self.sum += other.sum

    def minus(self, earlier: Histogram) -> Histogram:
        """What was recorded since `earlier`, a copy of this histogram taken before."""
        old = earlier.counts
        delta = {i: n - old.get(i, 0) for i, n in self.counts.items() if n != old.get(i, 0)}
        return Histogram(delta, self.sum - earlier.sum)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def mean(self) -> float:
        n = self.count
        return self.sum / n if n else 0.0

    def min(self) -> int:
        return lowest(min(self.counts)) if self.counts else 0

    def max(self) -> int:
        return highest(max(self.counts)) if self.counts else 0

    def percentile(self, p: float) -> int:
        """The value at percentile `p` (0-100): the highest value of the bucket holding the
        ceil(p% of count)-th value, as HdrHistogram's getValueAtPercentile."""
        return self.percentiles([p])[0]

    def percentiles(self, ps: Iterable[float]) -> list[int]:
        wanted = list(ps)
        n = self.count
        if n == 0:
            return [0 for _ in wanted]
        order = sorted(range(len(wanted)), key=lambda k: wanted[k])
        out = [0] * len(wanted)
        buckets = sorted(self.counts.items())
        seen = 0
        pos = 0
        for k in order:
            target = max(1, math.ceil(min(max(wanted[k], 0.0), 100.0) / 100.0 * n))
            while seen + buckets[pos][1] < target:
                seen += buckets[pos][1]
                pos += 1
            out[k] = highest(buckets[pos][0])
        return out

    def quantiles(self, ticks_per_half: int = 10) -> dict[str, int]:
        """Percentile -> value on HdrHistogram's percentile scale: `ticks_per_half` steps in
        each half of the remaining distance to 100% (0-50, 50-75, 75-87.5, ...), down to
        a single value, then 100. Keys are percentiles as strings (JSON object keys)."""
        n = self.count
        if n == 0:
            return {}
        points: list[float] = []
        level = 0
        while True:
            lo = 100.0 - 100.0 / (1 << level)
            hi = 100.0 - 100.0 / (1 << (level + 1))
            points.extend(lo + (hi - lo) * t / ticks_per_half for t in range(ticks_per_half))
            if (100.0 - hi) / 100.0 * n < 1.0 or level > 40:
                break
            level += 1
        points.append(100.0)
        values = self.percentiles(points)
        return {_pct_key(p): v for p, v in zip(points, values, strict=True)}

    def to_sparse(self) -> dict[str, object]:
        """A JSON-friendly form (bucket index -> count) that `from_sparse` reads back."""
        return {"subBucketBits": SUB_BUCKET_BITS, "sum": self.sum,
                "buckets": {str(i): n for i, n in sorted(self.counts.items())}}

    @staticmethod
    def from_sparse(data: Mapping[str, object]) -> Histogram:
        buckets = data.get("buckets", {})
        total = data.get("sum", 0)
        if not isinstance(buckets, Mapping) or not isinstance(total, int):
            raise ValueError("not a sparse histogram")
        return Histogram({int(i): int(n) for i, n in buckets.items()}, total)


FAST_LIMIT = 1 << 17
"""Values (microseconds) below this, 131 ms, are bucketed by a table lookup in `Recorder`."""
_table: list[int] = []


def _bucket_table() -> list[int]:
    """index(v) for every v below FAST_LIMIT (built once, on first use: 1 MiB, shared int
    objects), so a recorder finds a bucket with one list lookup."""
    if not _table:
        ints = list(range(index(FAST_LIMIT - 1) + 1))
        _table.extend(ints[index(v)] for v in range(FAST_LIMIT))
    return _table


class Recorder:
    """Where one thread records latencies, cheaper than `Histogram.record`: values below
    FAST_LIMIT go to a list of counts indexed by bucket (`table` gives the bucket), the
    others to `slow` (a dict, as Histogram.counts); negative values count as 0. Hot paths
    record a batch at a time with `record_since`. Other threads read it with `snapshot()`,
    a Histogram."""

    __slots__ = ("fast", "slow", "sum", "table")

    def __init__(self) -> None:
        self.table = _bucket_table()
        self.fast = [0] * (self.table[-1] + 1)
        self.slow: dict[int, int] = {}
        self.sum = 0

    def record(self, value: int) -> None:
        if 0 <= value < FAST_LIMIT:
            self.fast[self.table[value]] += 1
            self.sum += value
        else:
            self.record_slow(value)
            if value > 0:
                self.sum += value

    def record_slow(self, value: int) -> None:
        idx = index(value)
        self.slow[idx] = self.slow.get(idx, 0) + 1

    def record_many(self, values: Iterable[int]) -> None:
        """`record` each of `values` (microseconds): `record_since` with times that give
        exactly these values, so the bucketing loop exists once."""
        self.record_since(0, (-1000 * v for v in values))

    def record_since(self, now: int, times: Iterable[int]) -> None:
        """`record((now - t) // 1000)` for each of `times`: the microseconds from each
        time (nanoseconds) to `now`, in one loop."""
        fast, table, total = self.fast, self.table, 0
        for t in times:
            value = (now - t) // 1000
            if 0 <= value < FAST_LIMIT:
                fast[table[value]] += 1
                total += value
            else:
                self.record_slow(value)
                if value > 0:
                    total += value
        self.sum += total

    def snapshot(self) -> Histogram:
        """What was recorded so far (list and dict copies are atomic under the GIL)."""
        fast, slow, total = self.fast.copy(), self.slow.copy(), self.sum
        counts = dict(filter(itemgetter(1), enumerate(fast)))
        for idx, n in slow.items():
            counts[idx] = counts.get(idx, 0) + n
        return Histogram(counts, total)


def merge(histograms: Iterable[Histogram]) -> Histogram:
    out = Histogram()
    for h in histograms:
        out.add(h)
    return out


def _pct_key(p: float) -> str:
    return f"{p:.6f}".rstrip("0").rstrip(".") if p != int(p) else f"{int(p)}.0"
