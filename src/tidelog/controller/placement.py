"""Where new partitions go: spread over every live broker, racks interleaved, the less
loaded first.

A pure function of what it is given, so any broker computing it from the same registry
and loads places the same way, and tests need no cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: int
    rack: str | None


def place(count: int, brokers: Sequence[Candidate], loads: Mapping[int, int]) -> list[int]:
    """Owners for `count` new partitions. Each goes to the broker that has received the
    fewest of this call's partitions; among equals, the one with the fewest partitions
    overall (`loads` plus this call's), then the rack that has received the fewest of
    this call's partitions, then the lowest node id. So a topic's partitions spread evenly
    over every broker and zone, balanced or not, and the remainder goes to the less
    loaded (evening out counts is the balancer's job, not a new topic's)."""
    if not brokers:
        raise ValueError("no live broker to place partitions on")
    load = {b.node_id: loads.get(b.node_id, 0) for b in brokers}
    here: dict[int, int] = {}
    per_rack: dict[str | None, int] = {}
    out = []
    for _ in range(count):
        best = min(brokers, key=lambda b: (here.get(b.node_id, 0), load[b.node_id],
                                           per_rack.get(b.rack, 0), b.node_id))
        out.append(best.node_id)
        load[best.node_id] += 1
        here[best.node_id] = here.get(best.node_id, 0) + 1
        per_rack[best.rack] = per_rack.get(best.rack, 0) + 1
    return out
