"""Server-side partition assignors of the KIP-848 consumer protocol: pure functions.

Vocabulary:
- *member spec*: what the assignor knows of a member: the topic ids it subscribes to
  (existing topics only) and its current target assignment (for stickiness).
- *partition counts*: topic id -> number of partitions, for every subscribed topic.
- *assignment*: member id -> {topic id: frozenset of partitions}; every member of the input
  appears in the output (possibly with nothing), no partition is given twice.

`uniform` (Kafka's default) spreads all subscribed partitions as evenly as subscriptions
allow and keeps each member's previous partitions where that costs no balance, so a
rebalance moves as few partitions as it can. `range` gives each member a contiguous range
of every topic it subscribes to, in member order, so co-partitioned topics line up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

TopicPartition = tuple[uuid.UUID, int]
MemberAssignment = dict[uuid.UUID, frozenset[int]]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    topics: frozenset[uuid.UUID]
    assignment: Mapping[uuid.UUID, frozenset[int]] = field(default_factory=dict)
    instance_id: str | None = None


Assignor = Callable[[Mapping[str, MemberSpec], Mapping[uuid.UUID, int]],
                    dict[str, MemberAssignment]]


def _build(held: Mapping[str, list[TopicPartition]]) -> dict[str, MemberAssignment]:
    out: dict[str, MemberAssignment] = {}
    for member, tps in held.items():
        by_topic: dict[uuid.UUID, set[int]] = {}
        for t, p in tps:
            by_topic.setdefault(t, set()).add(p)
        out[member] = {t: frozenset(ps) for t, ps in by_topic.items()}
    return out


def uniform(members: Mapping[str, MemberSpec],
            partitions: Mapping[uuid.UUID, int]) -> dict[str, MemberAssignment]:
    """Balanced and sticky: counts differ by at most one when all members subscribe to the
    same topics; otherwise no partition can move to an eligible member holding two fewer."""
    ids = sorted(members)
    held: dict[str, list[TopicPartition]] = {m: [] for m in ids}
    owner: dict[TopicPartition, str] = {}
    # 1. Stickiness: each member keeps its previous, still valid partitions (first claim wins).
    for m in ids:
        spec = members[m]
        for t in sorted(spec.assignment):
            if t not in spec.topics or t not in partitions:
                continue
            for p in sorted(spec.assignment[t]):
                if 0 <= p < partitions[t] and (t, p) not in owner:
                    owner[(t, p)] = m
                    held[m].append((t, p))
    if not ids:
        return {}
    topic_sets = {frozenset(members[m].topics & partitions.keys()) for m in ids}
    if len(topic_sets) == 1:
        _uniform_homogeneous(ids, held, owner, sorted(topic_sets.pop()), partitions)
    else:
        _uniform_general(ids, members, held, owner, partitions)
    return _build(held)


def _uniform_homogeneous(ids: list[str], held: dict[str, list[TopicPartition]],
                         owner: dict[TopicPartition, str], topics: list[uuid.UUID],
                         partitions: Mapping[uuid.UUID, int]) -> None:
    total = sum(partitions[t] for t in topics)
    base, extra = divmod(total, len(ids))
    # Members already holding the most get the +1 slots: fewer partitions move.
    order = sorted(ids, key=lambda m: (-len(held[m]), m))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    free: list[TopicPartition] = []
    for m in order:
        if len(held[m]) > quota[m]:
            free.extend(held[m][quota[m]:])
            del held[m][quota[m]:]
    free.extend(tp for t in topics for tp in ((t, p) for p in range(partitions[t]))
                if tp not in owner)
    free.sort()
    it = iter(free)
    for m in order:
        while len(held[m]) < quota[m]:
            held[m].append(next(it))


def _uniform_general(ids: list[str], members: Mapping[str, MemberSpec],
                     held: dict[str, list[TopicPartition]], owner: dict[TopicPartition, str],
                     partitions: Mapping[uuid.UUID, int]) -> None:
    subscribers: dict[uuid.UUID, list[str]] = {}
    for m in ids:
        for t in members[m].topics:
            if t in partitions:
                subscribers.setdefault(t, []).append(m)
    count = {m: len(held[m]) for m in ids}
    # Partitions with the fewest candidates first, each to its least loaded candidate.
    unowned = sorted(((t, p) for t in subscribers for p in range(partitions[t])
                      if (t, p) not in owner),
                     key=lambda tp: (len(subscribers[tp[0]]), tp))
    for t, p in unowned:
        m = min(subscribers[t], key=lambda c: (count[c], c))
        held[m].append((t, p))
        owner[(t, p)] = m
        count[m] += 1
    # Even out: while some member can pass one partition along a chain of subscribers to
    # a member holding two fewer, do it (the ones in between give one and take one).
    # Every chain lowers the sum of squared counts, so this ends; at the end no load can be
    # lowered without raising another's above it.
    while any(_pass_along(src, subscribers, held, count)
              for src in sorted(ids, key=lambda c: (-count[c], c))):
        pass
    for m in ids:
        held[m].sort()


def _pass_along(src: str, subscribers: Mapping[uuid.UUID, list[str]],
                held: dict[str, list[TopicPartition]], count: dict[str, int]) -> bool:
    """Breadth-first from `src`: the shortest chain of moves ending at a member holding
    at most `count[src] - 2`; done if found."""
    came: dict[str, tuple[str, TopicPartition]] = {}
    queue = [src]
    for u in queue:
        for tp in sorted(held[u], reverse=True):
            for v in subscribers[tp[0]]:
                if v == src or v in came:
                    continue
                came[v] = (u, tp)
                if count[v] + 2 <= count[src]:
                    count[src] -= 1
                    count[v] += 1
                    while v != src:
                        u, tp = came[v]
                        held[u].remove(tp)
                        held[v].append(tp)
                        v = u
                    return True
                queue.append(v)
    return False


def range_(members: Mapping[str, MemberSpec],
           partitions: Mapping[uuid.UUID, int]) -> dict[str, MemberAssignment]:
    """Per topic, its subscribers in one global order (instance id, else member id) take
    contiguous ranges, the first `n % members` one partition longer."""
    order = sorted(members, key=lambda m: (members[m].instance_id or m, m))
    held: dict[str, list[TopicPartition]] = {m: [] for m in order}
    for t in sorted(partitions):
        subs = [m for m in order if t in members[m].topics]
        if not subs:
            continue
        base, extra = divmod(partitions[t], len(subs))
        start = 0
        for i, m in enumerate(subs):
            n = base + (1 if i < extra else 0)
            held[m].extend((t, p) for p in range(start, start + n))
            start += n
    return _build(held)


ASSIGNORS: dict[str, Assignor] = {"uniform": uniform, "range": range_}
