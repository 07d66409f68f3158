"""Rate budgets shared by every thread of every worker process (shared memory + one lock).

`SendSchedule` hands out send tickets: ticket `i` is due at a fixed time given by the
current rate segment, whoever claims it. Producers claim tickets, wait until each is due,
send, and measure latency from the ticket's due time as well as from the actual send, so a
stalled producer shows up as latency instead of a lower rate (no coordinated omission).
The coordinator changes the rate (warm-up ramp, catch-up rate) by starting a new segment
at "now" that continues the count of tickets due so far.

`TokenBucket` caps the records consumed per second across all consumers (the original's
`--max-consume-record-rate`), with a burst of a tenth of a second.

Times are `time.monotonic_ns()` values passed in by the caller, so tests control the clock.
"""

from __future__ import annotations

import math
from typing import Any

_NEXT, _SEG_T0 = 0, 1  # int slots
_SEG_N0, _RATE = 0, 1  # float slots


class SendSchedule:
    def __init__(self, ctx: Any) -> None:
        """`ctx`: a multiprocessing context (its Lock and RawArray are shared with workers
        started from it)."""
        self._lock = ctx.Lock()
        self._ints = ctx.RawArray("q", 2)
        self._floats = ctx.RawArray("d", 2)

    @property
    def rate(self) -> float:
        return float(self._floats[_RATE])

    def set_rate(self, rate: float, now_ns: int) -> None:
        """From `now_ns` on, tickets fall due at `rate` per second."""
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be positive and finite, got {rate}")
        with self._lock:
            old = self._floats[_RATE]
            if old > 0:
                due = self._floats[_SEG_N0] + (now_ns - self._ints[_SEG_T0]) * old / 1e9
            else:
                due = float(self._ints[_NEXT])
            self._ints[_SEG_T0] = now_ns
            self._floats[_SEG_N0] = due
            self._floats[_RATE] = rate

    def claim(self, now_ns: int, max_tickets: int) -> tuple[int, int, float, int]:
        """Claim the tickets already due (at most `max_tickets`), or the next one if none
        is due yet. Returns (first ticket, its due time, nanoseconds between them, how
        many). A claimed ticket that is not due yet may fall due sooner or later if the
        rate changes meanwhile: ask `due(ticket)` again before sleeping long."""
        with self._lock:
            rate = self._floats[_RATE]
            if rate <= 0:
                raise RuntimeError("no rate set")
            seg_t0, seg_n0 = self._ints[_SEG_T0], self._floats[_SEG_N0]
            first = self._ints[_NEXT]
            due_count = seg_n0 + (now_ns - seg_t0) * rate / 1e9
            n = min(max(1, math.floor(due_count) - first + 1), max_tickets)
            self._ints[_NEXT] = first + n
        step = 1e9 / rate
        return int(first), int(seg_t0) + round((first - seg_n0) * step), step, n

    def next_due(self) -> int:
        """When the next unclaimed ticket falls due. Read without the lock (a sender asks
        on every wake): a rate change at the same moment can give a stale time, which
        moves one wake, never a ticket (tickets are only handed out by `claim`)."""
        rate = float(self._floats[_RATE])
        if rate <= 0:
            raise RuntimeError("no rate set")
        seg_t0, seg_n0, first = self._ints[_SEG_T0], self._floats[_SEG_N0], self._ints[_NEXT]
        return int(seg_t0) + round(float(first - seg_n0) * 1e9 / rate)

    def due(self, ticket: int) -> int:
        """When `ticket` falls due under the current rate."""
        with self._lock:
            rate = self._floats[_RATE]
            seg_t0, seg_n0 = self._ints[_SEG_T0], self._floats[_SEG_N0]
        return int(seg_t0) + round(float(ticket - seg_n0) * 1e9 / float(rate))

    @property
    def claimed(self) -> int:
        return int(self._ints[_NEXT])


class TokenBucket:
    """At most `rate` tokens a second, `rate / 10` of burst; a taker may go into debt and is
    told how long to wait, so one big batch is paid for by a wait after it."""

    def __init__(self, ctx: Any, rate: float, now_ns: int) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate / 10)
        self._lock = ctx.Lock()
        self._tokens = ctx.RawArray("d", [self.capacity])
        self._last = ctx.RawArray("q", [now_ns])

    def take(self, n: int, now_ns: int) -> int:
        """Take `n` tokens; returns the nanoseconds to wait before going on (0 if none)."""
        with self._lock:
            elapsed = max(0, now_ns - self._last[0])
            tokens = min(self.capacity, self._tokens[0] + elapsed * self.rate / 1e9) - n
            self._tokens[0] = tokens
            self._last[0] = max(now_ns, self._last[0])
        return 0 if tokens >= 0 else math.ceil(-tokens / self.rate * 1e9)


MIN_RATE = 1.0
"""msg/s at the start of the warm-up ramp, as the original."""


def ramp_rate(now: float, ramp: tuple[float, float], target: float) -> float:
    """The send rate at `now` of a warm-up that rises linearly from MIN_RATE at `ramp[0]`
    to `target` at `ramp[1]` (the first half of the warm-up), then holds."""
    frac = min(1.0, max(0.0, (now - ramp[0]) / max(1e-9, ramp[1] - ramp[0])))
    return MIN_RATE + (target - MIN_RATE) * frac
