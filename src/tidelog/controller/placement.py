"""Where new partitions go: every live broker, racks interleaved, fewest partitions first.

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
    """Owners for `count` new partitions. Each goes to the broker with the fewest
    partitions so far (`loads` plus what this call placed); among equals, the rack that
    has received the fewest of this call's partitions, then the lowest node id. So a
    topic's partitions spread evenly over brokers and zones, balanced or not."""
    if not brokers:
        raise ValueError("no live broker to place partitions on")
    load = {b.node_id: loads.get(b.node_id, 0) for b in brokers}
    per_rack: dict[str | None, int] = {}
    out = []
    for _ in range(count):
        best = min(brokers, key=lambda b: (load[b.node_id], per_rack.get(b.rack, 0),
                                           b.node_id))
        out.append(best.node_id)
        load[best.node_id] += 1
        per_rack[best.rack] = per_rack.get(best.rack, 0) + 1
    return out
