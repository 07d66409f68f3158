"""The classic group protocol's data: group states and the table of their transitions,
members, and the snapshot of a group kept in the state log under `g/<group_id>`.

Vocabulary:
- *generation*: numbers the group's memberships; it is bumped each time a join phase
  ends, and a member's requests carry the one it was given.
- *rebalance*: PreparingRebalance (every member must send JoinGroup again) ->
  CompletingRebalance (the leader computes the assignment, every member sends SyncGroup)
  -> Stable. The broker never reads assignments: assignors run in the clients.
- *pending member*: a member id handed out with MEMBER_ID_REQUIRED (JoinGroup v4+). It is
  not a member until it joins again with that id, but the join phase waits for it.
- *static member* (KIP-345): one with a `group.instance.id`. The instance id is its
  identity: a new join with it takes over the member (a new member id, the old one fenced).
- *pending sync*: the members given the current generation that have not sent SyncGroup.
- *snapshot*: what survives a restart: protocol type, generation, selected protocol,
  leader, members with their protocols and assignment. It is taken when the leader's
  assignment is stored, when the group empties, and when a static member is replaced
  in a Stable group; a restart restores the group as it was then (Stable, or Empty).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

KEY_PREFIX = b"g/"
SNAPSHOT_VERSION = 1
CONSUMER_PROTOCOL = "consumer"


class GroupState(enum.Enum):
    """Kafka's names: ListGroups and DescribeGroups send them as they are."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


class Event(enum.Enum):
    REBALANCE = "rebalance"  # membership or a member's protocols changed: all must rejoin
    JOINED = "joined"  # the join phase ended with members: the leader assigns
    EMPTIED = "emptied"  # the join phase ended with no member left
    ASSIGNED = "assigned"  # the leader's assignment is durable
    DELETE = "delete"  # DeleteGroups, or an empty group without offsets cleaned up


S, E = GroupState, Event
TRANSITIONS: dict[GroupState, dict[Event, GroupState]] = {
    S.EMPTY: {E.REBALANCE: S.PREPARING_REBALANCE, E.DELETE: S.DEAD},
    S.PREPARING_REBALANCE: {E.JOINED: S.COMPLETING_REBALANCE, E.EMPTIED: S.EMPTY,
                            E.DELETE: S.DEAD},
    S.COMPLETING_REBALANCE: {E.REBALANCE: S.PREPARING_REBALANCE, E.ASSIGNED: S.STABLE,
                             E.DELETE: S.DEAD},
    S.STABLE: {E.REBALANCE: S.PREPARING_REBALANCE, E.DELETE: S.DEAD},
    S.DEAD: {},
}
del S, E


class IllegalTransition(Exception):
    """A coordinator bug: an event the group's state has no transition for."""


def next_state(state: GroupState, event: Event) -> GroupState:
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"{event.value} in state {state.value}") from None


Protocols = tuple[tuple[str, bytes], ...]  # (name, metadata) in the member's preference order


@dataclass(frozen=True, slots=True)
class JoinRequest:
    group_id: str
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: Protocols
    require_known_member_id: bool = True  # JoinGroup v4+: an unknown member gets an id first
    can_skip_assignment: bool = True  # JoinGroup v9+ (KIP-814)


@dataclass(frozen=True, slots=True)
class JoinResult:
    error: str | None  # a Kafka error name, None for success
    member_id: str
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: tuple[tuple[str, str | None, bytes], ...] = ()  # the leader's: id, instance, meta
    skip_assignment: bool = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    error: str | None
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(frozen=True, slots=True)
class MemberSummary:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """DescribeGroups' view: protocol and member bytes only for a Stable group, as Kafka."""

    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: tuple[MemberSummary, ...]


@dataclass(slots=True, eq=False)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: Protocols
    assignment: bytes = b""
    heartbeat_deadline: int = 0
    join_waiter: asyncio.Future[JoinResult] | None = None
    sync_waiter: asyncio.Future[SyncResult] | None = None

    def metadata(self, protocol: str | None) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""

    def answer_join(self, result: JoinResult) -> None:
        if self.join_waiter is not None and not self.join_waiter.done():
            self.join_waiter.set_result(result)
        self.join_waiter = None

    def answer_sync(self, result: SyncResult) -> None:
        if self.sync_waiter is not None and not self.sync_waiter.done():
            self.sync_waiter.set_result(result)
        self.sync_waiter = None


@dataclass(slots=True, eq=False)
class Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)  # in joining order
    static: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    pending: dict[str, int] = field(default_factory=dict)  # pending member -> expiry
    pending_sync: set[str] = field(default_factory=set)
    rebalance_deadline: int | None = None  # PreparingRebalance ends by then
    delay_remaining: int | None = None  # initial delay: how much longer it may still grow
    new_member_added: bool = False  # a member arrived during the initial delay
    sync_deadline: int | None = None  # pending-sync members are removed then
    assigning: bool = False  # the leader's assignment is being made durable
    empty_since: int = 0

    def transition(self, event: Event) -> None:
        self.state = next_state(self.state, event)

    # -- membership ---------------------------------------------------------------------

    def add(self, member: Member, protocol_type: str) -> None:
        if not self.members:
            self.protocol_type = protocol_type
        self.members[member.member_id] = member
        if member.instance_id is not None:
            self.static[member.instance_id] = member.member_id
        if self.leader is None:
            self.leader = member.member_id

    def remove(self, member_id: str) -> Member:
        member = self.members.pop(member_id)
        if member.instance_id is not None and self.static.get(member.instance_id) == member_id:
            del self.static[member.instance_id]
        self.pending_sync.discard(member_id)
        if self.leader == member_id:
            self.leader = next(iter(self.members), None)
        return member

    def replace_static(self, instance_id: str, old_id: str, new_id: str) -> Member:
        """The member of `instance_id` takes `new_id`; it keeps its place and assignment."""
        member = self.members[old_id]
        self.members = {(new_id if k == old_id else k): v for k, v in self.members.items()}
        member.member_id = new_id
        self.static[instance_id] = new_id
        if self.leader == old_id:
            self.leader = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        return member

    def validate_member(self, member_id: str, instance_id: str | None) -> str | None:
        """UNKNOWN_MEMBER_ID or FENCED_INSTANCE_ID as Kafka decides them, else None."""
        if instance_id is not None:
            current = self.static.get(instance_id)
            if current is None:
                return "unknown_member_id"
            if current != member_id:
                return "fenced_instance_id"
        elif member_id not in self.members:
            return "unknown_member_id"
        return None

    def all_joined(self) -> bool:
        return not self.pending and all(m.join_waiter is not None
                                        for m in self.members.values())

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    # -- protocols ----------------------------------------------------------------------

    def candidate_protocols(self) -> set[str]:
        """The protocols every member supports."""
        sets = [{name for name, _ in m.protocols} for m in self.members.values()]
        return set.intersection(*sets) if sets else set()

    def supports(self, protocol_type: str, names: set[str]) -> bool:
        if not self.members:
            return bool(protocol_type) and bool(names)
        return protocol_type == self.protocol_type and bool(names & self.candidate_protocols())

    def select_protocol(self) -> str:
        """Each member votes for its most preferred candidate; ties go to the leader's
        preference (Kafka leaves ties to hash order)."""
        candidates = self.candidate_protocols()
        votes = Counter(next(n for n, _ in m.protocols if n in candidates)
                        for m in self.members.values())
        top = max(votes.values())
        leader = self.members.get(self.leader or "") or next(iter(self.members.values()))
        return next(n for n, _ in leader.protocols if votes.get(n) == top)

    def join_result(self, member: Member) -> JoinResult:
        """The JoinGroup answer of the current generation; the leader gets the members."""
        is_leader = member.member_id == self.leader
        return JoinResult(None, member.member_id, self.generation, self.protocol_type,
                          self.protocol_name, self.leader or "",
                          self.member_list() if is_leader else ())

    def member_list(self) -> tuple[tuple[str, str | None, bytes], ...]:
        return tuple((m.member_id, m.instance_id, m.metadata(self.protocol_name))
                     for m in self.members.values())

    def subscribed_topics(self) -> set[str] | None:
        if self.protocol_type != CONSUMER_PROTOCOL:
            return None
        if not self.members:
            return set()
        if self.protocol_name is None:
            return None
        topics: set[str] = set()
        try:
            for m in self.members.values():
                if not any(n == self.protocol_name for n, _ in m.protocols):
                    return None
                topics.update(parse_subscription(m.metadata(self.protocol_name)))
        except ValueError:
            return None
        return topics

    def summary(self) -> GroupSummary:
        stable = self.state is GroupState.STABLE
        members = tuple(MemberSummary(
            m.member_id, m.instance_id, m.client_id, m.client_host,
            m.metadata(self.protocol_name) if stable else b"",
            m.assignment if stable else b"") for m in self.members.values())
        return GroupSummary(self.group_id, self.state.value, self.protocol_type or "",
                            (self.protocol_name or "") if stable else "", members)

    # -- snapshot -----------------------------------------------------------------------

    def encode(self, assignments: dict[str, bytes] | None = None) -> bytes:
        """The snapshot; `assignments` overrides the members' (the leader's, not applied
        until durable)."""
        def b64(b: bytes) -> str:
            return base64.b64encode(b).decode()

        members = [{
            "id": m.member_id, "instance": m.instance_id, "client_id": m.client_id,
            "client_host": m.client_host, "session_ms": m.session_timeout_ms,
            "rebalance_ms": m.rebalance_timeout_ms,
            "protocols": [[n, b64(meta)] for n, meta in m.protocols],
            "assignment": b64(m.assignment if assignments is None
                              else assignments.get(m.member_id, b"")),
        } for m in self.members.values()]
        return json.dumps({
            "v": SNAPSHOT_VERSION, "protocol_type": self.protocol_type,
            "generation": self.generation,
            "protocol": self.protocol_name if members else None,
            "leader": self.leader if members else None, "members": members,
        }, separators=(",", ":")).encode()


def decode_group(group_id: str, value: bytes, now_ms: int) -> Group:
    """A group from its snapshot: Stable with its members (each has one session timeout
    from `now_ms` to show up again), or Empty."""
    rec: dict[str, Any] = json.loads(value)
    if rec.get("v") != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {rec.get('v')!r}")
    group = Group(group_id, generation=int(rec["generation"]),
                  protocol_type=rec["protocol_type"], empty_since=now_ms)
    for m in rec["members"]:
        member = Member(
            str(m["id"]), m["instance"], str(m["client_id"]), str(m["client_host"]),
            int(m["session_ms"]), int(m["rebalance_ms"]),
            tuple((str(n), base64.b64decode(meta)) for n, meta in m["protocols"]),
            base64.b64decode(m["assignment"]), now_ms + int(m["session_ms"]))
        group.members[member.member_id] = member
        if member.instance_id is not None:
            group.static[member.instance_id] = member.member_id
    if group.members:
        group.state = GroupState.STABLE
        group.protocol_name = rec["protocol"]
        leader = rec["leader"]
        group.leader = leader if leader in group.members else next(iter(group.members))
    return group


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


def parse_subscription(metadata: bytes) -> list[str]:
    """The topics of a ConsumerProtocolSubscription (any version: topics come first)."""
    try:
        pos = _I16.size  # version
        (count,) = _I32.unpack_from(metadata, pos)
        pos += _I32.size
        if count < 0:
            raise ValueError("null topic list")
        topics = []
        for _ in range(count):
            (size,) = _I16.unpack_from(metadata, pos)
            pos += _I16.size
            if size < 0 or pos + size > len(metadata):
                raise ValueError("bad topic name")
            topics.append(metadata[pos : pos + size].decode())
            pos += size
        return topics
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable subscription: {exc}") from exc
