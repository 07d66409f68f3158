"""Which partitions to move so every live broker owns about as many: the balancer's plan.

A pure function of what it is given (owners, live brokers, moves already asked for), so
tests need no cluster. Moves go from the most loaded broker to the least loaded one, one
partition at a time, until no two brokers differ by more than one partition; a partition
with a move pending counts at its target and is not moved again. Of the partitions the
most loaded broker could give, it gives one of the topic it holds most of compared with
the receiver, so every topic spreads too (and a restarted broker gets some of each).

Then produce bytes per second (`plan_swaps`): while the busiest broker takes much more
than the idlest, a busy partition of the one trades places with a quieter one of the
other (or just moves, where partition counts allow), keeping counts even, so the two
passes never undo each other.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

MIN_GAP = float(1 << 20)
"""Bytes/s below which a difference between brokers is not worth a move."""
TOLERANCE = 0.2
"""A difference under this share of the mean broker's bytes/s is left alone."""


def plan_moves(owners: Mapping[int, int], live: Sequence[int],
               pending: Mapping[int, int] | None = None,
               limit: int | None = None,
               topic_of: Mapping[int, str] | None = None) -> list[tuple[int, int]]:
    """(stream id, target) moves that even out the partitions per live broker.
    `owners`: stream id -> owner (streams of no live broker are left to takeover and
    placement); `pending`: stream id -> target of moves not done yet."""
    pending = pending or {}
    if len(live) < 2:
        return []
    mine = _by_broker(owners, live, pending)
    topics = topic_of or {}
    out: list[tuple[int, int]] = []
    while limit is None or len(out) < limit:
        most = max(live, key=lambda b: (len(mine[b]), -b))
        least = min(live, key=lambda b: (len(mine[b]), b))
        if len(mine[most]) - len(mine[least]) <= 1:
            break
        movable = [sid for sid in mine[most] if sid not in pending]
        if not movable:
            break

        def surplus(sid: int, most: int = most, least: int = least) -> int:
            t = topics.get(sid)
            return (sum(1 for s in mine[most] if topics.get(s) == t)
                    - sum(1 for s in mine[least] if topics.get(s) == t))

        # the topic most over-represented here; among equals the newest partition (the
        # oldest stay where clients know them)
        sid = max(movable, key=lambda s: (surplus(s), s))
        mine[most].remove(sid)
        mine[least].append(sid)
        out.append((sid, least))
    return out


def plan_swaps(owners: Mapping[int, int], live: Sequence[int], rates: Mapping[int, float],
               pending: Mapping[int, int] | None = None, limit: int | None = None,
               min_gap: float = MIN_GAP, tolerance: float = TOLERANCE
               ) -> list[tuple[int, int]]:
    """(stream id, target) moves that even out produce bytes/s (`rates`: stream id ->
    bytes/s, absent: idle) over the live brokers without changing how many partitions
    each owns by more than `plan_moves` allows. Each step moves load d from the busiest
    broker to the idlest, gap/4 <= d <= 3 gap/4, as close to half their gap as the
    partitions allow: the two end at most gap/2 apart, so every move is worth its pause,
    the spread shrinks every step, the plan ends, and noise in the rates cannot send one
    hot partition back and forth (moving it whole would only swap the busy broker)."""
    pending = pending or {}
    if len(live) < 2:
        return []
    mine = _by_broker(owners, live, pending)
    load = {b: sum(rates.get(s, 0.0) for s in mine[b]) for b in live}
    mean = sum(load.values()) / len(live)
    fixed = set(pending)
    out: list[tuple[int, int]] = []
    while limit is None or len(out) + 2 <= limit:
        most = max(live, key=lambda b: (load[b], -b))
        least = min(live, key=lambda b: (load[b], b))
        gap = load[most] - load[least]
        if gap <= max(min_gap, tolerance * mean):
            break
        best = _best_trade(mine, most, least, rates, fixed, gap)
        if best is None:
            break
        give, take = best
        trade: tuple[tuple[int | None, int, int], ...] = ((give, most, least),
                                                           (take, least, most))
        for moved, src, dst in trade:
            if moved is None:
                continue
            mine[src].remove(moved)
            mine[dst].append(moved)
            fixed.add(moved)
            out.append((moved, dst))
            load[src] -= rates.get(moved, 0.0)
            load[dst] += rates.get(moved, 0.0)
    return out


def _by_broker(owners: Mapping[int, int], live: Sequence[int],
               pending: Mapping[int, int]) -> dict[int, list[int]]:
    """Each live broker's streams, a pending move counted at its target."""
    mine: dict[int, list[int]] = {b: [] for b in live}
    for sid, owner in sorted(owners.items()):
        where = pending.get(sid, owner)
        if where in mine:
            mine[where].append(sid)
    return mine


def _best_trade(mine: Mapping[int, list[int]], most: int, least: int,
                rates: Mapping[int, float], fixed: set[int], gap: float
                ) -> tuple[int, int | None] | None:
    """The partition `most` gives and the one (or None) `least` gives back."""
    back = sorted((rates.get(s, 0.0), s) for s in mine[least] if s not in fixed)
    weights = [w for w, _s in back]
    may_just_move = len(mine[most]) > len(mine[least])
    best: tuple[float, int, int | None] | None = None
    for sid in mine[most]:
        if sid in fixed:
            continue
        w = rates.get(sid, 0.0)
        options: list[tuple[float, int | None]] = [(0.0, None)] if may_just_move else []
        i = bisect.bisect_left(weights, w - gap / 2)  # the return closest to w - gap/2
        options += [back[j] for j in (i - 1, i) if 0 <= j < len(back)]
        for back_w, back_sid in options:
            d = w - back_w
            if 0.25 * gap <= d <= 0.75 * gap:
                score = abs(gap - 2 * d)
                if best is None or score < best[0]:
                    best = (score, sid, back_sid)
    return None if best is None else (best[1], best[2])
