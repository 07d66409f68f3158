"""State the coordinator shares with its worker processes, besides the rate budgets.

Vocabulary: a *phase* is a stretch of the run (prepare, warmup, backlog, test, catchup,
drain). Every record is tagged with the phase it was *sent* in (from its `st` header), and
workers count sends, acknowledgements and receipts per send phase, so the report can say
exactly how many records sent during the test were acknowledged and received, however late
they arrive.
"""

from __future__ import annotations

from typing import Any

MAX_PHASES = 16
_COUNT, _PRODUCING, _STOP, _STARTS = 0, 1, 2, 3
COUNT_SLOT, PRODUCING_SLOT = _COUNT, _PRODUCING  # items of `SharedState.count_view()`


class SharedState:
    def __init__(self, ctx: Any) -> None:
        self._a = ctx.RawArray("q", _STARTS + MAX_PHASES)
        self.wake = ctx.Event()  # set whenever producing starts, so idle senders wake at once

    def begin_phase(self, epoch_ns: int) -> int:
        """Start a new phase at `epoch_ns`; returns its index."""
        idx = int(self._a[_COUNT])
        if idx >= MAX_PHASES:
            raise RuntimeError("too many phases")
        self._a[_STARTS + idx] = epoch_ns
        self._a[_COUNT] = idx + 1  # after the start time: readers never see an unset start
        return idx

    def phase_count(self) -> int:
        return int(self._a[_COUNT])

    def count_view(self) -> memoryview:
        """The shared array as 64-bit integers, for checks in the senders' loops (an item
        costs a fraction of the method call): item COUNT_SLOT is `phase_count()`, item
        PRODUCING_SLOT is `producing` (0 or 1)."""
        return memoryview(self._a).cast("B").cast("q")

    def phases(self) -> tuple[int, list[int]]:
        """(index of the current phase, start times of phases 0..current)."""
        n = int(self._a[_COUNT])
        return n - 1, list(self._a[_STARTS:_STARTS + n])

    @property
    def producing(self) -> bool:
        return bool(self._a[_PRODUCING])

    def set_producing(self, on: bool) -> None:
        self._a[_PRODUCING] = 1 if on else 0
        if on:
            self.wake.set()
        else:
            self.wake.clear()

    @property
    def stopping(self) -> bool:
        return bool(self._a[_STOP])

    def stop(self) -> None:
        self._a[_STOP] = 1
        self.wake.set()


def phase_of(send_ns: int, current: int, starts: list[int]) -> int:
    """The phase a record sent at `send_ns` belongs to (0 if before every start)."""
    p = current
    while p > 0 and send_ns < starts[p]:
        p -= 1
    return p


def count_in_phases(counts: list[int], send_times: list[int], current: int,
                    starts: list[int]) -> None:
    """Add each of `send_times` (non-empty) to `counts` at its phase: all at once when the
    earliest is in the current phase (nearly always), else one by one."""
    if min(send_times) >= starts[current]:
        counts[current] += len(send_times)
    else:
        for t in send_times:
            counts[phase_of(t, current, starts)] += 1
