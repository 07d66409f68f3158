"""Classic consumer groups: JoinGroup, SyncGroup, Heartbeat, LeaveGroup as Kafka's group
coordinator answers them (states, transitions and vocabulary in `classic_state.py`).

JoinGroup and SyncGroup are long polls: a request parks a future on its member, and the
transition that ends the phase (every member rejoined, the rebalance timeout passed, the
leader's assignment is durable) answers them all. Every change of state is synchronous, so
no request sees a half-made transition; only the state-log write is awaited.

Timers run on the coordinator's injected clock, checked by `tick` (every 100 ms):
- session timeout: a member that neither heartbeats nor waits in a join or sync is
  removed, and the group rebalances;
- rebalance timeout: members that have not rejoined when it passes are removed (static
  members stay until their session expires); an empty group's first join waits
  `initial_rebalance_delay_ms` instead, extended while new members keep arriving;
- pending sync: members that do not send SyncGroup within the rebalance timeout after the
  join phase are removed.

Snapshots are written in the order they were taken: one writer at a time, and the latest
snapshot of a group replaces an unwritten older one.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tidelog.coordinator.classic_state import (
    KEY_PREFIX,
    Event,
    Group,
    GroupState,
    GroupSummary,
    JoinRequest,
    JoinResult,
    Member,
    SyncResult,
    decode_group,
)

if TYPE_CHECKING:
    from tidelog.coordinator.coordinator import GroupCoordinator

log = logging.getLogger(__name__)

# An Empty group with no committed offsets is forgotten after this long (Kafka removes
# such groups at its next offsets-retention check, every 10 minutes).
EMPTY_GROUP_TTL_MS = 600_000
CLEANUP_INTERVAL_MS = 60_000

PREPARING = GroupState.PREPARING_REBALANCE
COMPLETING = GroupState.COMPLETING_REBALANCE
STABLE = GroupState.STABLE
EMPTY = GroupState.EMPTY


def _inconsistent(ours: str | None, theirs: str | None) -> bool:
    return ours is not None and theirs is not None and ours != theirs


def _done(result: JoinResult) -> asyncio.Future[JoinResult]:
    fut: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
    fut.set_result(result)
    return fut


class ClassicGroups:
    def __init__(self, coord: GroupCoordinator) -> None:
        self.coord = coord
        self._groups: dict[str, Group] = {}
        self._unwritten: dict[str, bytes | None] = {}  # group id -> snapshot (None: tombstone)
        self._taken = 0  # snapshots taken
        self._written = 0  # snapshots durable
        self._write_lock = asyncio.Lock()
        self._next_cleanup: int | None = None

    # -- reads for the other parts of the coordinator ----------------------------------

    def has(self, group_id: str) -> bool:
        """Whether the group has members (an Empty group is known but not active)."""
        group = self._groups.get(group_id)
        return group is not None and group.state not in (EMPTY, GroupState.DEAD)

    def list(self) -> list[tuple[str, str, str]]:
        """(group id, Kafka state name, protocol type) of every known group."""
        return [(g.group_id, g.state.value, g.protocol_type or "")
                for g in self._groups.values()]

    def describe(self, group_id: str) -> GroupSummary | None:
        group = self._groups.get(group_id)
        if group is None:
            return None
        self._expire(group, self.coord.now_ms())  # precise, not up to a tick late
        return group.summary()

    def subscribed_topics(self, group_id: str) -> set[str] | None:
        """Topics the members subscribe to (consumer protocol metadata); an empty set for
        an Empty group; None when unknown (not a consumer group, or unreadable)."""
        group = self._groups.get(group_id)
        return None if group is None else group.subscribed_topics()

    def validate_commit(self, group_id: str, member_id: str, generation_id: int,
                        group_instance_id: str | None) -> str | None:
        """The error an OffsetCommit from this member must fail with, or None.

        Kafka's rules: generation -1 without a member is a standalone commit, accepted
        while the group has no members; a member's commit needs its id and the current
        generation, and is refused with REBALANCE_IN_PROGRESS only in CompletingRebalance
        (in PreparingRebalance it is accepted: eager consumers commit before rejoining).
        """
        group = self._groups.get(group_id)
        if group is None:
            return None if generation_id < 0 else "illegal_generation"
        if generation_id < 0 and group.state is EMPTY:
            return None
        if generation_id >= 0 or member_id or group_instance_id is not None:
            err = group.validate_member(member_id, group_instance_id)
            if err is not None:
                return err
            if generation_id != group.generation:
                return "illegal_generation"
        elif group.state is not EMPTY:
            return "unknown_member_id"
        if group.state is COMPLETING:
            return "rebalance_in_progress"
        member = group.members.get(member_id)
        if member is not None:  # a commit is a sign of life, as a heartbeat
            member.heartbeat_deadline = self.coord.now_ms() + member.session_timeout_ms
        return None

    # -- JoinGroup ----------------------------------------------------------------------

    async def join(self, req: JoinRequest) -> JoinResult:
        cfg = self.coord.config
        if not req.group_id:
            return JoinResult("invalid_group_id", req.member_id)
        if not cfg.min_session_timeout_ms <= req.session_timeout_ms <= cfg.max_session_timeout_ms:
            return JoinResult("invalid_session_timeout", req.member_id)
        if not req.protocol_type or not req.protocols or self.coord.consumer.has(req.group_id):
            return JoinResult("inconsistent_group_protocol", req.member_id)
        group = self._groups.get(req.group_id)
        now = self.coord.now_ms()
        if group is None:
            if req.member_id:
                return JoinResult("unknown_member_id", req.member_id)
            group = self._groups[req.group_id] = Group(req.group_id, empty_since=now)
        if not group.supports(req.protocol_type, {name for name, _ in req.protocols}):
            return JoinResult("inconsistent_group_protocol", req.member_id)
        if req.member_id:
            waiter = self._join_known(group, req, now)
        else:
            waiter = self._join_new(group, req, now)
        await self._flush()
        return await waiter

    def _join_new(self, group: Group, req: JoinRequest, now: int) -> asyncio.Future[JoinResult]:
        if req.instance_id is not None:
            new_id = f"{req.instance_id}-{uuid.uuid4()}"
            old_id = group.static.get(req.instance_id)
            if old_id is not None:
                return self._replace_static(group, req.instance_id, old_id, new_id, req, now)
            return self._add_member(group, new_id, req, now)
        new_id = f"{req.client_id}-{uuid.uuid4()}"
        if req.require_known_member_id:
            group.pending[new_id] = now + req.session_timeout_ms
            return _done(JoinResult("member_id_required", new_id))
        return self._add_member(group, new_id, req, now)

    def _join_known(self, group: Group, req: JoinRequest,
                    now: int) -> asyncio.Future[JoinResult]:
        if req.member_id in group.pending:
            return self._add_member(group, req.member_id, req, now)
        err = group.validate_member(req.member_id, req.instance_id)
        if err is not None:
            return _done(JoinResult(err, req.member_id))
        member = group.members[req.member_id]
        member.heartbeat_deadline = now + req.session_timeout_ms
        unchanged = member.protocols == req.protocols
        if group.state is COMPLETING and unchanged:
            return _done(group.join_result(member))  # the answer it missed, once more
        if group.state is STABLE and unchanged and member.member_id != group.leader:
            return _done(group.join_result(member))  # a follower with nothing new
        waiter = self._update_member(member, req)
        if group.state is PREPARING:
            self._maybe_complete_join(group, now)
        else:
            self._prepare_rebalance(group, now, f"member {member.member_id} rejoined")
        return waiter

    def _add_member(self, group: Group, member_id: str, req: JoinRequest,
                    now: int) -> asyncio.Future[JoinResult]:
        member = Member(member_id, req.instance_id, req.client_id, req.client_host,
                        req.session_timeout_ms, req.rebalance_timeout_ms, req.protocols,
                        heartbeat_deadline=now + req.session_timeout_ms)
        waiter = self._update_member(member, req)
        group.pending.pop(member_id, None)
        if group.state is PREPARING and group.generation == 0:
            group.new_member_added = True
        group.add(member, req.protocol_type)
        if group.state is PREPARING:
            self._maybe_complete_join(group, now)
        else:
            self._prepare_rebalance(group, now, f"member {member_id} joined")
        return waiter

    def _update_member(self, member: Member, req: JoinRequest) -> asyncio.Future[JoinResult]:
        """Take the join's protocols and timeouts; the member now waits for the join phase
        (an older join of it still waiting is told to rejoin)."""
        member.protocols = req.protocols
        member.session_timeout_ms = req.session_timeout_ms
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.client_id, member.client_host = req.client_id, req.client_host
        member.answer_join(JoinResult("rebalance_in_progress", member.member_id))
        member.join_waiter = asyncio.get_running_loop().create_future()
        return member.join_waiter

    def _replace_static(self, group: Group, instance_id: str, old_id: str, new_id: str,
                        req: JoinRequest, now: int) -> asyncio.Future[JoinResult]:
        """KIP-345: a static member came back under a new member id. In a Stable group
        whose protocol stays the same it gets its assignment back with no rebalance."""
        old = group.members[old_id]
        old.answer_join(JoinResult("fenced_instance_id", old_id))
        old.answer_sync(SyncResult("fenced_instance_id"))
        previous_leader = group.leader or ""
        member = group.replace_static(instance_id, old_id, new_id)
        member.heartbeat_deadline = now + req.session_timeout_ms
        log.info("group %s: static member %s replaced %s by %s", group.group_id, instance_id,
                 old_id, new_id)
        waiter = self._update_member(member, req)
        if group.state is STABLE and group.select_protocol() == group.protocol_name:
            member.join_waiter = None
            # A leader that may skip the assignment (v9+) is told it leads; an older client
            # is shown the previous leader so it does not assign to a Stable group.
            leads = group.leader == new_id and req.can_skip_assignment
            waiter.set_result(JoinResult(
                None, new_id, group.generation, group.protocol_type, group.protocol_name,
                new_id if leads else previous_leader, group.member_list() if leads else (),
                skip_assignment=leads))
            self._take_snapshot(group)
        elif group.state is PREPARING:
            self._maybe_complete_join(group, now)
        else:
            self._prepare_rebalance(group, now, f"static member {instance_id} rejoined")
        return waiter

    # -- SyncGroup ----------------------------------------------------------------------

    async def sync(self, group_id: str, generation: int, member_id: str,
                   instance_id: str | None, protocol_type: str | None,
                   protocol_name: str | None, assignments: dict[str, bytes]) -> SyncResult:
        group = self._groups.get(group_id)
        if group is None:
            return SyncResult("unknown_member_id")
        err = group.validate_member(member_id, instance_id)
        if err is not None:
            return SyncResult(err)
        if generation != group.generation:
            return SyncResult("illegal_generation")
        if (_inconsistent(protocol_type, group.protocol_type)
                or _inconsistent(protocol_name, group.protocol_name)):
            return SyncResult("inconsistent_group_protocol")
        if group.state is PREPARING:
            return SyncResult("rebalance_in_progress")
        now = self.coord.now_ms()
        member = group.members[member_id]
        member.heartbeat_deadline = now + member.session_timeout_ms
        group.pending_sync.discard(member_id)
        if group.state is STABLE:
            return SyncResult(None, member.assignment, group.protocol_type, group.protocol_name)
        member.answer_sync(SyncResult("rebalance_in_progress"))
        waiter: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        member.sync_waiter = waiter
        if member_id == group.leader and not group.assigning:
            await self._store_assignment(group, assignments)
        return await waiter

    async def _store_assignment(self, group: Group, assignments: dict[str, bytes]) -> None:
        """Make the leader's assignment durable, then hand it out (Stable) unless the group
        moved on meanwhile; members it leaves out get an empty assignment."""
        group.assigning = True
        full = {mid: assignments.get(mid, b"") for mid in group.members}
        generation = group.generation
        try:
            await self._flush(self._take_snapshot(group, full))
            failed = False
        except Exception:
            log.exception("group %s: storing the assignment failed", group.group_id)
            failed = True
        if group.state is not COMPLETING or group.generation != generation:
            return  # a rebalance began meanwhile and told every waiting member
        group.assigning = False
        if failed:
            for m in group.members.values():
                m.answer_sync(SyncResult("coordinator_not_available"))
            self._prepare_rebalance(group, self.coord.now_ms(), "assignment not stored")
            return
        group.transition(Event.ASSIGNED)
        for mid, m in group.members.items():
            m.assignment = full[mid]
            m.answer_sync(SyncResult(None, m.assignment, group.protocol_type,
                                     group.protocol_name))
        log.info("group %s: generation %d stable with %d members", group.group_id,
                 group.generation, len(group.members))

    # -- Heartbeat and LeaveGroup -------------------------------------------------------

    def heartbeat(self, group_id: str, member_id: str, instance_id: str | None,
                  generation: int) -> str | None:
        group = self._groups.get(group_id)
        if group is None:
            return "unknown_member_id"
        err = group.validate_member(member_id, instance_id)
        if err is not None:
            return err
        if generation != group.generation:
            return "illegal_generation"
        member = group.members[member_id]
        member.heartbeat_deadline = self.coord.now_ms() + member.session_timeout_ms
        return "rebalance_in_progress" if group.state is PREPARING else None

    async def leave(self, group_id: str, members: Sequence[tuple[str, str | None]]
                    ) -> builtins.list[str | None]:
        """Per (member id, instance id), the error of its removal or None. An empty member
        id removes the static member of the instance id (admin removal)."""
        group = self._groups.get(group_id)
        if group is None:
            return ["unknown_member_id"] * len(members)
        now = self.coord.now_ms()
        out: builtins.list[str | None] = []
        for member_id, instance_id in members:
            if not member_id:
                current = group.static.get(instance_id) if instance_id is not None else None
                if current is None:
                    out.append("unknown_member_id")
                    continue
                self._remove_member(group, current, now, "left the group")
                out.append(None)
            elif member_id in group.pending:
                del group.pending[member_id]
                self._maybe_complete_join(group, now)
                out.append(None)
            else:
                err = group.validate_member(member_id, instance_id)
                if err is None:
                    self._remove_member(group, member_id, now, "left the group")
                out.append(err)
        await self._flush()
        return out

    # -- DeleteGroups -------------------------------------------------------------------

    async def delete(self, group_id: str) -> str | None:
        """GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP, or None once the tombstone is durable."""
        group = self._groups.get(group_id)
        if group is None:
            return "group_id_not_found"
        # A member whose session ended is gone now, not at the next tick (Kafka's timers
        # are exact: an admin deleting a group right after the session timeout succeeds).
        self._expire(group, self.coord.now_ms())
        if group.state is not EMPTY:
            return "non_empty_group"
        self._forget(group)
        await self._flush()
        return None

    def _forget(self, group: Group) -> None:
        group.transition(Event.DELETE)
        del self._groups[group.group_id]
        self._taken += 1
        self._unwritten[group.group_id] = None

    # -- transitions --------------------------------------------------------------------

    def _prepare_rebalance(self, group: Group, now: int, reason: str) -> None:
        if group.state is COMPLETING:
            for m in group.members.values():
                m.assignment = b""
                m.answer_sync(SyncResult("rebalance_in_progress"))
        group.pending_sync.clear()
        group.sync_deadline = None
        group.assigning = False
        group.new_member_added = False
        delay = self.coord.config.initial_rebalance_delay_ms
        timeout = group.rebalance_timeout_ms()
        if group.state is EMPTY and delay > 0:
            group.rebalance_deadline = now + delay
            group.delay_remaining = max(timeout - delay, 0)
        else:
            group.rebalance_deadline = now + timeout
            group.delay_remaining = None
        group.transition(Event.REBALANCE)
        log.info("group %s: rebalancing (generation %d): %s", group.group_id,
                 group.generation, reason)
        self._maybe_complete_join(group, now)

    def _maybe_complete_join(self, group: Group, now: int) -> None:
        if group.state is PREPARING and group.delay_remaining is None and group.all_joined():
            self._complete_join(group, now)

    def _complete_join(self, group: Group, now: int) -> None:
        """End the join phase: dynamic members that did not rejoin are out; the rest get
        the new generation (the leader with everyone's metadata)."""
        for m in list(group.members.values()):
            if m.join_waiter is None and m.instance_id is None:
                group.remove(m.member_id)
                log.info("group %s: member %s did not rejoin in time", group.group_id,
                         m.member_id)
        group.delay_remaining = None
        if group.members and not self._elect_joined_leader(group):
            # Only static members that have not rejoined are left: give them longer.
            group.rebalance_deadline = now + group.rebalance_timeout_ms()
            return
        group.generation += 1
        group.rebalance_deadline = None
        if not group.members:
            group.protocol_name = None
            group.transition(Event.EMPTIED)
            group.empty_since = now
            self._take_snapshot(group)
            log.info("group %s: empty at generation %d", group.group_id, group.generation)
            return
        group.protocol_name = group.select_protocol()
        group.transition(Event.JOINED)
        for m in group.members.values():
            m.answer_join(group.join_result(m))
            m.heartbeat_deadline = now + m.session_timeout_ms
            group.pending_sync.add(m.member_id)
        group.sync_deadline = now + group.rebalance_timeout_ms()

    @staticmethod
    def _elect_joined_leader(group: Group) -> bool:
        """Keep the leader if it rejoined, else take any member that did."""
        leader = group.members.get(group.leader or "")
        if leader is not None and leader.join_waiter is not None:
            return True
        for m in group.members.values():
            if m.join_waiter is not None:
                group.leader = m.member_id
                return True
        return False

    def _remove_member(self, group: Group, member_id: str, now: int, reason: str) -> None:
        member = group.remove(member_id)
        member.answer_join(JoinResult("unknown_member_id", ""))
        member.answer_sync(SyncResult("unknown_member_id"))
        log.info("group %s: member %s %s", group.group_id, member_id, reason)
        if group.state in (STABLE, COMPLETING):
            self._prepare_rebalance(group, now, f"member {member_id} {reason}")
        elif group.state is PREPARING:
            self._maybe_complete_join(group, now)

    # -- timers -------------------------------------------------------------------------

    async def tick(self, now_ms: int) -> None:
        for group in list(self._groups.values()):
            self._expire(group, now_ms)
        if self._next_cleanup is None or now_ms >= self._next_cleanup:
            self._next_cleanup = now_ms + CLEANUP_INTERVAL_MS
            with_offsets = self.coord.offsets.groups()
            for group in list(self._groups.values()):
                if (group.state is EMPTY and not group.pending
                        and now_ms - group.empty_since >= EMPTY_GROUP_TTL_MS
                        and group.group_id not in with_offsets):
                    log.info("group %s: empty without offsets, removed", group.group_id)
                    self._forget(group)
        await self._flush()

    def _expire(self, group: Group, now: int) -> None:
        for member_id, deadline in list(group.pending.items()):
            if now >= deadline:
                del group.pending[member_id]
                self._maybe_complete_join(group, now)
        for m in list(group.members.values()):
            if (m.join_waiter is None and m.sync_waiter is None
                    and now >= m.heartbeat_deadline and m.member_id in group.members):
                self._remove_member(group, m.member_id, now, "session timed out")
        if (group.state is PREPARING and group.rebalance_deadline is not None
                and now >= group.rebalance_deadline):
            remaining = group.delay_remaining
            if remaining and group.new_member_added:
                delay = min(self.coord.config.initial_rebalance_delay_ms, remaining)
                group.delay_remaining = remaining - delay
                group.new_member_added = False
                group.rebalance_deadline = now + delay
            else:
                self._complete_join(group, now)
        if (group.state in (COMPLETING, STABLE) and group.sync_deadline is not None
                and now >= group.sync_deadline):
            group.sync_deadline = None
            missing = sorted(group.pending_sync)
            if missing:
                for member_id in missing:
                    member = group.remove(member_id)
                    member.answer_sync(SyncResult("unknown_member_id"))
                self._prepare_rebalance(group, now, f"no SyncGroup from {', '.join(missing)}")

    # -- persistence --------------------------------------------------------------------

    def _take_snapshot(self, group: Group, assignments: dict[str, bytes] | None = None) -> int:
        self._taken += 1
        self._unwritten[group.group_id] = group.encode(assignments)
        return self._taken

    async def _flush(self, upto: int | None = None) -> None:
        """Write the snapshots taken so far; returns once snapshot number `upto` (default:
        the latest) is durable."""
        target = self._taken if upto is None else upto
        async with self._write_lock:
            if self._written >= target or not self._unwritten:
                return
            batch, taken = list(self._unwritten.items()), self._taken
            self._unwritten.clear()
            try:
                await self.coord.log.write([(KEY_PREFIX + gid.encode(), value)
                                            for gid, value in batch])
            except BaseException:
                for gid, value in batch:  # newer snapshots taken meanwhile win
                    self._unwritten.setdefault(gid, value)
                raise
            self._written = taken

    def unload(self, belongs: Callable[[str], bool]) -> int:
        """Drop the groups `belongs` names (their coordinator moved): parked JoinGroup and
        SyncGroup requests get NOT_COORDINATOR. Snapshots not yet written are dropped too:
        their writes would fail, and the new coordinator has the last durable state."""
        gone = [g for gid, g in self._groups.items() if belongs(gid)]
        for group in gone:
            for member in group.members.values():
                member.answer_join(JoinResult("not_coordinator", member.member_id))
                member.answer_sync(SyncResult("not_coordinator"))
            del self._groups[group.group_id]
            self._unwritten.pop(group.group_id, None)
        return len(gone)

    def restore(self, state: dict[bytes, bytes]) -> None:
        """Groups from their snapshots. Members of a Stable group keep their ids and
        generation: one that heartbeats within its session timeout carries on without a
        rebalance (as after a Kafka coordinator failover); the others expire."""
        now = self.coord.now_ms()
        for key, value in state.items():
            if not key.startswith(KEY_PREFIX):
                continue
            group_id = key[len(KEY_PREFIX):].decode(errors="replace")
            if group_id in self._groups:
                continue  # live here already: its members may have requests parked on it
            try:
                self._groups[group_id] = decode_group(group_id, value, now)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable group record %r: %r", key, exc)
        log.info("restored %d classic groups", len(self._groups))
