"""KIP-848 consumer groups: the ConsumerGroupHeartbeat state machine with server-side
assignment, persisted in the state log under `c/<group_id>` (one JSON value per group).

A heartbeat runs in three steps, all without an await so no other request sees a half
update (Kafka's GroupMetadataManager.consumerGroupHeartbeat):
1. find, create or replace the member and validate its epoch (fencing);
2. bump the group epoch if membership, a subscription or subscribed topic metadata changed,
   and then compute a new target assignment with the group's assignor;
3. reconcile the member towards its target (`consumer_state.reconcile`).
Then the changed groups are written to the state log and only after that is the member
answered, so an acknowledged epoch survives a broker restart. After a restart every member
gets a fresh session timeout: members that keep heartbeating with their epoch continue,
the others expire and their partitions are reassigned.

Departure from Kafka: a known member that heartbeats with epoch 0 (librdkafka keeps its
member id after being fenced) is taken as a rejoin of the same member: its partitions are
released and it is reconciled from nothing, instead of being fenced again.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import functools
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidelog.coordinator.assignors import ASSIGNORS, MemberSpec
from tidelog.coordinator.consumer_state import (
    Group,
    Member,
    MemberState,
    Partitions,
    decode,
    encode,
    is_subset,
    reconcile,
)

if TYPE_CHECKING:
    from tidelog.coordinator.coordinator import GroupCoordinator

log = logging.getLogger(__name__)

PREFIX = b"c/"
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2
PROTOCOL_TYPE = "consumer"


class GroupError(Exception):
    """A heartbeat refused with a Kafka error (kio `ErrorCode` name)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    """ConsumerGroupHeartbeat, protocol-neutral. None means "unchanged since the last
    heartbeat" for every optional field, as on the wire."""

    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None = None
    rack_id: str | None = None
    rebalance_timeout_ms: int = -1
    subscribed_topic_names: tuple[str, ...] | None = None
    subscribed_topic_regex: str | None = None
    server_assignor: str | None = None
    owned: Partitions | None = None
    client_id: str = ""
    client_host: str = ""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    error: str | None = None
    message: str | None = None
    member_id: str | None = None
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0
    assignment: Partitions | None = None  # None: unchanged, the member keeps what it has


def new_member_id() -> str:
    """Like Kafka's Uuid.toString(): url-safe base64 of 16 random bytes, no padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class Joined(enum.Enum):
    KNOWN = "known"  # a heartbeat of a member in the group
    NEW = "new"  # a new member: the group epoch is bumped
    AGAIN = "again"  # a known member joining again with epoch 0: reconciled from nothing
    REPLACES = "replaces"  # a static member's new incarnation takes over its partitions


@functools.lru_cache(maxsize=1024)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def _stored(m: Member) -> tuple[object, ...]:
    """What of a member is written to the state log (a change needs a write)."""
    return (m.instance_id, m.rack_id, m.client_id, m.client_host, m.topics, m.regex,
            m.assignor, m.rebalance_timeout_ms, m.epoch, m.previous_epoch, m.state,
            m.assigned, m.revoking)


class ConsumerGroups:
    def __init__(self, coord: GroupCoordinator) -> None:
        self.coord = coord
        self.groups: dict[str, Group] = {}
        self._dirty: set[str] = set()
        self._write_lock = asyncio.Lock()

    # --- facade used by the coordinator and by other group APIs -----------------------

    def restore(self, state: dict[bytes, bytes]) -> None:
        now = self.coord.now_ms()
        for key, value in state.items():
            if not key.startswith(PREFIX):
                continue
            group_id = key[len(PREFIX):].decode()
            if group_id in self.groups:
                continue  # live here already
            try:
                self.groups[group_id] = decode(group_id, value, now)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("consumer group %r not restored: %r", group_id, exc)
        if self.groups:
            log.info("restored %d consumer groups", len(self.groups))

    def unload(self, belongs: Callable[[str], bool]) -> int:
        """Drop the groups `belongs` names (their coordinator moved; members' next
        heartbeat here gets NOT_COORDINATOR)."""
        gone = [gid for gid in self.groups if belongs(gid)]
        for gid in gone:
            del self.groups[gid]
            self._dirty.discard(gid)
        return len(gone)

    async def tick(self, now_ms: int) -> None:
        """Remove members whose session expired or that did not revoke in time."""
        session = self.coord.config.consumer_session_timeout_ms
        changed = []
        for g in list(self.groups.values()):
            expired = [(m, "session timeout") for m in g.members.values()
                       if now_ms - m.last_seen_ms > session]
            expired += [(m, "rebalance timeout") for m in g.members.values()
                        if m.state is MemberState.UNREVOKED and now_ms > m.revoke_deadline_ms
                        and now_ms - m.last_seen_ms <= session]
            for m, why in expired:
                log.info("group %s: member %s removed (%s)", g.group_id, m.member_id, why)
                self._remove_member(g, m.member_id)
            if expired:
                changed.append(g.group_id)
        await self._persist(changed)

    def has(self, group_id: str) -> bool:
        """An active consumer group (with members): its id is not free for the classic
        protocol. An empty one may be taken over, as Kafka converts empty groups."""
        g = self.groups.get(group_id)
        return g is not None and bool(g.members)

    def get(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    def validate_commit(self, group_id: str, member_id: str, member_epoch: int) -> str | None:
        """The error (kio `ErrorCode` name) an OffsetCommit/OffsetFetch from this member
        gets, or None (Kafka's ConsumerGroup.validateOffsetCommit)."""
        g = self.groups.get(group_id)
        if member_epoch < 0 and (g is None or not g.members):
            return None  # admin tools and manual assignment commit to an empty group
        m = g.members.get(member_id) if g is not None else None
        if m is None:
            return "unknown_member_id"
        if member_epoch != m.epoch:
            return "stale_member_epoch"
        return None

    def subscribed_topics(self, group_id: str) -> set[str] | None:
        g = self.groups.get(group_id)
        if g is None:
            return None
        out: set[str] = set()
        for m in g.members.values():
            out |= self._resolve(m)
        return out

    def list(self) -> list[tuple[str, str, str]]:
        classic = self.coord.classic
        return [(gid, g.state, PROTOCOL_TYPE) for gid, g in sorted(self.groups.items())
                if g.members or not classic.has(gid)]

    async def delete(self, group_id: str) -> str | None:
        """DeleteGroups: only an empty group goes (its committed offsets are the offset
        store's business). Returns an error name or None."""
        g = self.groups.get(group_id)
        if g is None:
            return "group_id_not_found"
        if g.members:
            return "non_empty_group"
        del self.groups[group_id]
        await self._persist([group_id])
        return None

    # --- ConsumerGroupHeartbeat -------------------------------------------------------

    async def heartbeat(self, req: HeartbeatRequest) -> HeartbeatResponse:
        try:
            resp, changed = self._heartbeat(req, self.coord.now_ms())
        except GroupError as exc:
            log.info("group %s member %s epoch %d: %s: %s", req.group_id, req.member_id,
                     req.member_epoch, exc.code, exc)
            return HeartbeatResponse(error=exc.code, message=str(exc),
                                     heartbeat_interval_ms=self._interval())
        if changed:
            await self._persist([req.group_id])
        return resp

    def _interval(self) -> int:
        return self.coord.config.consumer_heartbeat_interval_ms

    def _heartbeat(self, req: HeartbeatRequest, now: int) -> tuple[HeartbeatResponse, bool]:
        self._validate(req)
        if req.member_epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return self._leave(req)
        g = self.groups.get(req.group_id)
        if g is None:
            if req.member_epoch != 0:
                # Kafka answers UNKNOWN_MEMBER_ID (not the fatal GROUP_ID_NOT_FOUND) so the
                # member rejoins.
                raise GroupError("unknown_member_id", f"group {req.group_id} not found")
            g = Group(req.group_id, assignor=self.coord.config.consumer_assignor)
        m, how = self._member(g, req, req.member_id or new_member_id())
        self.groups[g.group_id] = g
        before = _stored(m)
        bump = how is Joined.NEW or g.epoch == 0
        bump |= self._update_member(g, m, req)
        m.last_seen_ms = now
        metadata = self._metadata(g)
        if metadata != g.metadata:
            g.metadata = metadata
            bump = True
        if bump:
            g.epoch += 1
        if g.epoch > g.assignment_epoch:
            self._assign(g)
        assigned = m.assigned
        reconcile(g, m, req.owned if req.member_epoch != 0 else {},
                  self._subscribed_ids(m), now)
        full = req.member_epoch == 0 or (
            req.rebalance_timeout_ms != -1 and req.owned is not None
            and (req.subscribed_topic_names is not None
                 or req.subscribed_topic_regex is not None))
        send = full or m.assigned != assigned
        resp = HeartbeatResponse(member_id=m.member_id, member_epoch=m.epoch,
                                 heartbeat_interval_ms=self._interval(),
                                 assignment=dict(m.assigned) if send else None)
        return resp, bump or how is not Joined.KNOWN or _stored(m) != before

    def _validate(self, req: HeartbeatRequest) -> None:
        """Checks that need no state (Kafka's throwIfConsumerGroupHeartbeatRequestIsInvalid)."""
        if not req.group_id:
            raise GroupError("invalid_request", "GroupId can't be empty.")
        if req.member_epoch < STATIC_LEAVE_EPOCH:
            raise GroupError("invalid_request", f"MemberEpoch {req.member_epoch} is invalid.")
        if req.member_epoch == STATIC_LEAVE_EPOCH and req.instance_id is None:
            raise GroupError("invalid_request",
                             "InstanceId can't be null when leaving as a static member.")
        if req.member_epoch == 0:
            if req.rebalance_timeout_ms == -1:
                raise GroupError("invalid_request",
                                 "RebalanceTimeoutMs must be provided in first request.")
            if req.subscribed_topic_names is None and req.subscribed_topic_regex is None:
                raise GroupError("invalid_request", "SubscribedTopicNames or "
                                 "SubscribedTopicRegex must be set in first request.")
        if req.server_assignor is not None and req.server_assignor not in ASSIGNORS:
            raise GroupError("unsupported_assignor",
                             f"ServerAssignor {req.server_assignor} is not supported. "
                             f"Supported assignors: {', '.join(ASSIGNORS)}.")
        if req.subscribed_topic_regex:
            try:
                re.compile(req.subscribed_topic_regex)
            except re.error as exc:
                raise GroupError("invalid_regular_expression",
                                 f"SubscribedTopicRegex is invalid: {exc}") from None

    def _member(self, g: Group, req: HeartbeatRequest, member_id: str) -> tuple[Member, Joined]:
        """The member this heartbeat is from, and how it came. Raises the fencing errors
        (Kafka's getOrMaybeSubscribe{Dynamic,Static}ConsumerGroupMember); changes nothing
        before it is sure not to raise."""
        m = g.members.get(member_id)
        if req.member_epoch != 0:
            if req.instance_id is not None:
                _check_static_holder(g.static.get(req.instance_id), req.instance_id, member_id)
            if m is None:
                raise GroupError("unknown_member_id",
                                 f"Member {member_id} is not a member of group {g.group_id}.")
            self._check_epoch(m, req)
            return m, Joined.KNOWN
        if m is not None:  # the same member joins again: it holds nothing now
            g.set_assignment(m, {}, {})
            m.epoch = m.previous_epoch = 0
            m.state = MemberState.STABLE
            log.info("group %s: member %s rejoins", g.group_id, member_id)
            return m, Joined.AGAIN
        previous = g.static.get(req.instance_id) if req.instance_id is not None else None
        m = Member(member_id, instance_id=req.instance_id)
        if previous is not None:
            old = g.members[previous]
            if old.epoch != STATIC_LEAVE_EPOCH:
                raise GroupError("unreleased_instance_id",
                                 f"Static member {member_id} with instance id "
                                 f"{req.instance_id} cannot join the group because the "
                                 f"instance id is owned by {previous} member.")
            # The new incarnation takes the old one's place, partitions and target.
            target = g.target.get(previous, {})
            g.remove(previous)
            for f in ("rack_id", "topics", "regex", "assignor", "rebalance_timeout_ms"):
                setattr(m, f, getattr(old, f))
            g.add(m)
            g.set_assignment(m, old.assigned, old.revoking)
            g.target[member_id] = target
            log.info("group %s: static member %s replaces %s (instance %s)", g.group_id,
                     member_id, previous, req.instance_id)
            return m, Joined.REPLACES
        g.add(m)
        log.info("group %s: member %s joins", g.group_id, member_id)
        return m, Joined.NEW

    @staticmethod
    def _check_epoch(m: Member, req: HeartbeatRequest) -> None:
        epoch = req.member_epoch
        if epoch > m.epoch:
            raise GroupError("fenced_member_epoch",
                             f"The consumer group member has a greater member epoch "
                             f"({epoch}) than the one known by the group coordinator "
                             f"({m.epoch}). The member must abandon all its partitions and "
                             f"rejoin.")
        if epoch < m.epoch and (epoch != m.previous_epoch
                                or not is_subset(req.owned, m.assigned)):
            # The previous epoch is accepted when our answer bumping it may have been lost.
            raise GroupError("fenced_member_epoch",
                             f"The consumer group member has a smaller member epoch "
                             f"({epoch}) than the one known by the group coordinator "
                             f"({m.epoch}). The member must abandon all its partitions and "
                             f"rejoin.")

    @staticmethod
    def _update_member(g: Group, m: Member, req: HeartbeatRequest) -> bool:
        """Apply the fields the heartbeat carries; True if the subscription changed."""
        if req.instance_id is not None:
            m.instance_id = req.instance_id
        if req.rack_id is not None:
            m.rack_id = req.rack_id
        if req.rebalance_timeout_ms != -1:
            m.rebalance_timeout_ms = req.rebalance_timeout_ms
        if req.server_assignor is not None:
            m.assignor = req.server_assignor or None
        m.client_id, m.client_host = req.client_id, req.client_host
        changed = False
        if req.subscribed_topic_names is not None:
            topics = tuple(sorted(set(req.subscribed_topic_names)))
            changed |= topics != m.topics
            m.topics = topics
        if req.subscribed_topic_regex is not None:
            regex = req.subscribed_topic_regex or None
            changed |= regex != m.regex
            m.regex = regex
        if changed:
            g.subscriptions = None
        return changed

    def _leave(self, req: HeartbeatRequest) -> tuple[HeartbeatResponse, bool]:
        g = self.groups.get(req.group_id)
        member_id = req.member_id
        if req.member_epoch == STATIC_LEAVE_EPOCH or req.instance_id is not None:
            _check_static_holder(g.static.get(req.instance_id or "") if g is not None else None,
                                 req.instance_id, member_id)
        if g is None or member_id not in g.members:
            raise GroupError("unknown_member_id",
                             f"Member {member_id} is not a member of group {req.group_id}.")
        if req.member_epoch == STATIC_LEAVE_EPOCH:
            # Its partitions wait for the instance to come back (or the session to end).
            m = g.members[member_id]
            m.previous_epoch, m.epoch = m.epoch, STATIC_LEAVE_EPOCH
            log.info("group %s: static member %s leaves for now", g.group_id, member_id)
        else:
            log.info("group %s: member %s leaves", g.group_id, member_id)
            self._remove_member(g, member_id)
        return HeartbeatResponse(member_id=member_id, member_epoch=req.member_epoch,
                                 heartbeat_interval_ms=0), True

    def _remove_member(self, g: Group, member_id: str) -> None:
        g.remove(member_id)
        g.epoch += 1
        self._assign(g)

    # --- subscriptions, metadata and assignment ---------------------------------------

    def _resolve(self, m: Member) -> set[str]:
        """The topic names a member subscribes to (by name or regex) that exist now."""
        return self._existing(m.topics, (m.regex,) if m.regex else ())

    def _existing(self, names: Iterable[str], regexes: Iterable[str]) -> set[str]:
        topics = self.coord.topics.topics
        out = {n for n in names if n in topics}
        for regex in regexes:
            pattern = _pattern(regex)
            out |= {n for n, t in topics.items() if not t.internal and pattern.fullmatch(n)}
        return out

    def _subscribed_ids(self, m: Member) -> frozenset[uuid.UUID]:
        topics = self.coord.topics.topics
        return frozenset(topics[n].topic_id for n in self._resolve(m))

    def _metadata(self, g: Group) -> dict[str, tuple[uuid.UUID, int]]:
        """Every subscribed topic that exists, with its id and partition count: when this
        changes, the group epoch is bumped."""
        topics = self.coord.topics.topics
        if g.subscriptions is None:
            names: set[str] = set()
            regexes: set[str] = set()
            for m in g.members.values():
                names.update(m.topics)
                if m.regex:
                    regexes.add(m.regex)
            g.subscriptions = (frozenset(names), frozenset(regexes))
        names = self._existing(*g.subscriptions)
        return {n: (topics[n].topic_id, topics[n].count) for n in sorted(names)}

    def _assign(self, g: Group) -> None:
        """A new target assignment for the group epoch, from the members' preferred
        assignor (the one most of them ask for) or the broker's default."""
        asked = Counter(m.assignor for m in g.members.values() if m.assignor)
        g.assignor = (asked.most_common(1)[0][0] if asked
                      else self.coord.config.consumer_assignor)
        assignor = ASSIGNORS.get(g.assignor, ASSIGNORS["uniform"])
        g.metadata = self._metadata(g)
        partitions = {tid: n for tid, n in g.metadata.values()}
        specs = {mid: MemberSpec(self._subscribed_ids(m), g.target.get(mid, {}), m.instance_id)
                 for mid, m in g.members.items()}
        g.target = dict(assignor(specs, partitions))
        g.assignment_epoch = g.epoch
        log.info("group %s: target assignment for epoch %d with %s: %s", g.group_id,
                 g.epoch, g.assignor, {mid: sum(len(ps) for ps in a.values())
                                       for mid, a in g.target.items()})

    # --- persistence ------------------------------------------------------------------

    async def _persist(self, group_ids: Iterable[str]) -> None:
        """Write the named groups' latest state. One writer at a time, and each write
        takes the state at its start, so the log's last value for a group is its latest;
        a caller whose change was taken by a write still in flight waits for that one."""
        mine = set(group_ids)
        if not mine:
            return
        self._dirty |= mine
        async with self._write_lock:
            batch = sorted(self._dirty)
            if not mine & set(batch):
                return
            self._dirty.clear()
            entries: list[tuple[bytes, bytes | None]] = []
            for gid in batch:
                g = self.groups.get(gid)
                entries.append((PREFIX + gid.encode(), encode(g) if g is not None else None))
            await self.coord.log.write(entries)


def partitions_of(owned: Iterable[tuple[uuid.UUID, Iterable[int]]]) -> Partitions:
    """A wire list of (topic id, partitions) as a mapping, merging repeated topics."""
    out: dict[uuid.UUID, frozenset[int]] = {}
    for tid, ps in owned:
        out[tid] = out.get(tid, frozenset()) | frozenset(ps)
    return out



def _check_static_holder(holder: str | None, instance_id: str | None, member_id: str) -> None:
    """A static member's heartbeat must come from the member holding its instance id."""
    if holder is None:
        raise GroupError("unknown_member_id", f"Instance id {instance_id} is unknown.")
    if holder != member_id:
        raise GroupError("fenced_instance_id",
                         f"Static member {member_id} with instance id {instance_id} was "
                         f"fenced by member {holder}.")
