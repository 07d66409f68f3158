"""`Tally`: what producers and consumers counted, cumulative or over an interval.

Workers keep cumulative tallies (each counter written by one thread only) and send the
coordinator the difference since their last report; the coordinator adds workers' deltas
into interval figures and intervals into phase totals. Counts of records are kept per send
phase (see shared.py) as well as in total.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidelog.tools.perf.histogram import Histogram
from tidelog.tools.perf.shared import MAX_PHASES


def _zeros() -> list[int]:
    return [0] * MAX_PHASES


@dataclass
class Tally:
    sent: list[int] = field(default_factory=_zeros)  # produce() calls accepted
    send_errors: list[int] = field(default_factory=_zeros)  # produce() raised
    acked: list[int] = field(default_factory=_zeros)
    failed: list[int] = field(default_factory=_zeros)  # delivery reported an error
    received: list[int] = field(default_factory=_zeros)
    acked_bytes: int = 0
    received_bytes: int = 0
    untagged: int = 0  # records received without an `st` header (not the tool's)
    produce: Histogram = field(default_factory=Histogram)  # us, ack - actual send
    produce_sched: Histogram = field(default_factory=Histogram)  # us, ack - scheduled send
    e2e: Histogram = field(default_factory=Histogram)  # us, receipt - `st`
    cpu_s: float = 0.0
    max_st: int = 0  # latest send time (epoch ns) of any record received

    def add(self, other: Tally, histograms: bool = True) -> None:
        """Add `other`'s counts (and, unless `histograms` is False, its histograms: a tally
        that only counts, like the whole run's, skips merging them)."""
        for mine, theirs in ((self.sent, other.sent), (self.send_errors, other.send_errors),
                             (self.acked, other.acked), (self.failed, other.failed),
                             (self.received, other.received)):
            for i, n in enumerate(theirs):
                mine[i] += n
        self.acked_bytes += other.acked_bytes
        self.received_bytes += other.received_bytes
        self.untagged += other.untagged
        if histograms:
            self.produce.add(other.produce)
            self.produce_sched.add(other.produce_sched)
            self.e2e.add(other.e2e)
        self.cpu_s += other.cpu_s
        self.max_st = max(self.max_st, other.max_st)

    def minus(self, earlier: Tally) -> Tally:
        """What this cumulative tally gained since `earlier` (max_st stays the latest)."""
        def diff(a: list[int], b: list[int]) -> list[int]:
            return [x - y for x, y in zip(a, b, strict=True)]
        return Tally(
            sent=diff(self.sent, earlier.sent),
            send_errors=diff(self.send_errors, earlier.send_errors),
            acked=diff(self.acked, earlier.acked),
            failed=diff(self.failed, earlier.failed),
            received=diff(self.received, earlier.received),
            acked_bytes=self.acked_bytes - earlier.acked_bytes,
            received_bytes=self.received_bytes - earlier.received_bytes,
            untagged=self.untagged - earlier.untagged,
            produce=self.produce.minus(earlier.produce),
            produce_sched=self.produce_sched.minus(earlier.produce_sched),
            e2e=self.e2e.minus(earlier.e2e),
            cpu_s=self.cpu_s - earlier.cpu_s,
            max_st=self.max_st,
        )

    @property
    def acked_total(self) -> int:
        return sum(self.acked)

    @property
    def errors_total(self) -> int:
        return sum(self.failed) + sum(self.send_errors)

    @property
    def received_total(self) -> int:
        return sum(self.received) + self.untagged
