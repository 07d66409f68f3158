"""Which partitions to move so every live broker owns about as many: the balancer's plan.

A pure function of what it is given (owners, live brokers, moves already asked for), so
tests need no cluster. Moves go from the most loaded broker to the least loaded one, one
partition at a time, until no two brokers differ by more than one partition; a partition
with a move pending counts at its target and is not moved again. Of the partitions the
most loaded broker could give, it gives one of the topic it holds most of compared with
the receiver, so every topic spreads too (and a restarted broker gets some of each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
    mine: dict[int, list[int]] = {b: [] for b in live}
    for sid, owner in sorted(owners.items()):
        where = pending.get(sid, owner)
        if where in mine:
            mine[where].append(sid)
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
