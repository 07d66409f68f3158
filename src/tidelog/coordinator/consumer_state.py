"""The KIP-848 group and member records, their reconciliation step, and their stored form.

Vocabulary (Kafka's):
- *group epoch*: bumped whenever what the assignor sees changes: a member joins or leaves,
  a subscription changes, a subscribed topic appears, disappears or changes partition count.
- *target assignment* and its *assignment epoch*: what the assignor computed for a group
  epoch; every member converges towards its own target.
- *member epoch*: the target epoch a member has reached.
- *assigned*: the member's current assignment, what it may consume (sent to it).
- *revoking*: partitions taken from the member that it may still be consuming; they stay
  owned by it (nobody else gets them) until a heartbeat's owned list no longer has them.
- *owned*: what a heartbeat reports the member holds; None means "not sent" and counts as
  still holding everything (Kafka's rule), so nothing moves on a guess.
- *unreleased*: target partitions still assigned to, or being revoked from, another member;
  handed over on a later heartbeat once freed.

Member states; `reconcile` is the only place that moves between them, by this table
(first matching row):

    in state               when                                       then
    STABLE, epoch=target   -                                          unchanged
    UNREVOKED              owned still holds some of `revoking`       unchanged
    any                    the target drops partitions still owned    UNREVOKED, epoch kept
    any                    some target partitions are not free yet    UNRELEASED, epoch=target
    any                    otherwise                                  STABLE, epoch=target
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TopicPartition = tuple[uuid.UUID, int]
Partitions = dict[uuid.UUID, frozenset[int]]
FORMAT_VERSION = 1


class MemberState(enum.Enum):
    STABLE = "stable"
    UNREVOKED = "unrevoked_partitions"
    UNRELEASED = "unreleased_partitions"


@dataclass(slots=True)
class Member:
    member_id: str
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    topics: tuple[str, ...] = ()
    regex: str | None = None
    assignor: str | None = None
    rebalance_timeout_ms: int = 300_000
    epoch: int = 0
    previous_epoch: int = 0
    state: MemberState = MemberState.STABLE
    assigned: Partitions = field(default_factory=dict)
    revoking: Partitions = field(default_factory=dict)
    # Not stored: a restart gives every member a fresh session and rebalance timeout.
    last_seen_ms: int = 0
    revoke_deadline_ms: int = 0


@dataclass(slots=True)
class Group:
    group_id: str
    epoch: int = 0
    assignment_epoch: int = 0
    assignor: str = ""
    metadata: dict[str, tuple[uuid.UUID, int]] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    target: dict[str, Partitions] = field(default_factory=dict)
    # Derived (rebuilt on load): who holds each partition (assigned or revoking), and
    # which member holds each static instance id.
    owners: dict[TopicPartition, str] = field(default_factory=dict)
    static: dict[str, str] = field(default_factory=dict)
    # Derived cache: the members' subscribed names and regexes (None: recompute).
    subscriptions: tuple[frozenset[str], frozenset[str]] | None = None

    @property
    def state(self) -> str:
        """Kafka's consumer group state names, as ListGroups and describe report them."""
        if not self.members:
            return "Empty"
        if self.epoch > self.assignment_epoch:
            return "Assigning"
        for m in self.members.values():
            if m.state is not MemberState.STABLE or m.epoch != self.assignment_epoch:
                return "Reconciling"
        return "Stable"

    def set_assignment(self, m: Member, assigned: Partitions, revoking: Partitions) -> None:
        """Replace a member's current assignment, keeping `owners` exact."""
        for tp in _pairs(m.assigned, m.revoking):
            if self.owners.get(tp) == m.member_id:
                del self.owners[tp]
        m.assigned = {t: ps for t, ps in assigned.items() if ps}
        m.revoking = {t: ps for t, ps in revoking.items() if ps}
        for tp in _pairs(m.assigned, m.revoking):
            self.owners[tp] = m.member_id

    def add(self, m: Member) -> None:
        self.members[m.member_id] = m
        self.subscriptions = None
        if m.instance_id is not None:
            self.static[m.instance_id] = m.member_id
        for tp in _pairs(m.assigned, m.revoking):
            self.owners[tp] = m.member_id

    def remove(self, member_id: str) -> Member:
        m = self.members.pop(member_id)
        self.subscriptions = None
        self.set_assignment(m, {}, {})
        self.target.pop(member_id, None)
        if m.instance_id is not None and self.static.get(m.instance_id) == member_id:
            del self.static[m.instance_id]
        return m


def _pairs(*maps: Partitions) -> Iterable[TopicPartition]:
    for mp in maps:
        for t, ps in mp.items():
            for p in ps:
                yield (t, p)


def owns_any(owned: Partitions | None, parts: Partitions) -> bool:
    """Whether a heartbeat's owned list still holds any of `parts` (None: assume it does)."""
    if owned is None:
        return True
    return any(owned.get(t, frozenset()) & ps for t, ps in parts.items())


def is_subset(owned: Partitions | None, assigned: Partitions) -> bool:
    if owned is None:
        return False
    return all(ps <= assigned.get(t, frozenset()) for t, ps in owned.items() if ps)


def reconcile(g: Group, m: Member, owned: Partitions | None,
              subscribed: frozenset[uuid.UUID], now_ms: int) -> None:
    """One step of Kafka's CurrentAssignmentBuilder: move `m` towards its target."""
    target_epoch = g.assignment_epoch
    if m.state is MemberState.STABLE and m.epoch == target_epoch:
        return
    if m.state is MemberState.UNREVOKED and owns_any(owned, m.revoking):
        return
    target = g.target.get(m.member_id, {})
    assigned: dict[uuid.UUID, frozenset[int]] = {}
    revoking: dict[uuid.UUID, frozenset[int]] = {}
    granted: dict[uuid.UUID, frozenset[int]] = {}
    unreleased = False
    for t in target.keys() | m.assigned.keys():
        want = target.get(t, frozenset()) if t in subscribed else frozenset()
        current = m.assigned.get(t, frozenset())
        keep = current & want
        assigned[t] = keep
        revoking[t] = current - keep
        free = frozenset(p for p in want - keep if g.owners.get((t, p), m.member_id)
                         == m.member_id)
        unreleased = unreleased or len(free) < len(want - keep)
        granted[t] = free
    revoking = {t: ps for t, ps in revoking.items() if ps}
    if revoking and owns_any(owned, revoking):
        # Keep the epoch: the member must first give these up (its next assignment
        # response lacks them); nobody else gets them meanwhile.
        if m.state is not MemberState.UNREVOKED:
            m.revoke_deadline_ms = now_ms + m.rebalance_timeout_ms
        m.state = MemberState.UNREVOKED
        g.set_assignment(m, assigned, revoking)
        return
    for t, ps in granted.items():
        assigned[t] = assigned.get(t, frozenset()) | ps
    m.state = MemberState.UNRELEASED if unreleased else MemberState.STABLE
    if m.epoch != target_epoch:
        m.previous_epoch, m.epoch = m.epoch, target_epoch
    g.set_assignment(m, assigned, {})


# --- stored form: state-log key `c/<group_id>`, JSON value ---------------------------

def _enc_parts(parts: Mapping[uuid.UUID, frozenset[int]]) -> dict[str, list[int]]:
    return {str(t): sorted(ps) for t, ps in sorted(parts.items()) if ps}


def _dec_parts(raw: Mapping[str, list[int]]) -> Partitions:
    return {uuid.UUID(t): frozenset(ps) for t, ps in raw.items()}


def encode(g: Group) -> bytes:
    members = {}
    for m in g.members.values():
        members[m.member_id] = {
            "instance_id": m.instance_id, "rack_id": m.rack_id, "client_id": m.client_id,
            "client_host": m.client_host, "topics": list(m.topics), "regex": m.regex,
            "assignor": m.assignor, "rebalance_timeout_ms": m.rebalance_timeout_ms,
            "epoch": m.epoch, "previous_epoch": m.previous_epoch, "state": m.state.value,
            "assigned": _enc_parts(m.assigned), "revoking": _enc_parts(m.revoking),
            "target": _enc_parts(g.target.get(m.member_id, {})),
        }
    return json.dumps({
        "v": FORMAT_VERSION, "epoch": g.epoch, "assignment_epoch": g.assignment_epoch,
        "assignor": g.assignor,
        "metadata": {name: [str(tid), n] for name, (tid, n) in sorted(g.metadata.items())},
        "members": members,
    }, separators=(",", ":"), sort_keys=True).encode()


def decode(group_id: str, value: bytes, now_ms: int) -> Group:
    raw = json.loads(value)
    if raw.get("v") != FORMAT_VERSION:
        raise ValueError(f"consumer group {group_id!r}: unknown format {raw.get('v')!r}")
    g = Group(group_id, raw["epoch"], raw["assignment_epoch"], raw["assignor"],
              {name: (uuid.UUID(tid), n) for name, (tid, n) in raw["metadata"].items()})
    for mid, r in raw["members"].items():
        m = Member(mid, r["instance_id"], r["rack_id"], r["client_id"], r["client_host"],
                   tuple(r["topics"]), r["regex"], r["assignor"], r["rebalance_timeout_ms"],
                   r["epoch"], r["previous_epoch"], MemberState(r["state"]),
                   _dec_parts(r["assigned"]), _dec_parts(r["revoking"]),
                   last_seen_ms=now_ms, revoke_deadline_ms=now_ms + r["rebalance_timeout_ms"])
        g.add(m)
        g.target[mid] = _dec_parts(r["target"])
    return g
