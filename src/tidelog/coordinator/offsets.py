"""Committed offsets of consumer groups, durable in the coordinator's state log.

Vocabulary:
- *committed offset*: per (group, topic, partition): offset, leader epoch, metadata, the
  wall time of the commit and, for OffsetCommit v2-v4 with a retention time, an explicit
  expire time.
- *active group*: one the classic or KIP-848 coordinator has members in
  (`coord.group_kind(g) is not None`); other groups are *empty* (members left) or *simple*
  (never had members: assign + commit consumers, admin tools).
- *activity marker*: per group, whether it was last seen active or since when it has been
  empty, persisted so retention after a restart still counts from the moment the group
  emptied (Kafka's `currentStateTimestamp`).

State-log keys are `o/` + a JSON list, so a '/' inside a group or topic name is never
ambiguous: `o/["group","topic",partition]` holds an offset, `o/["group"]` the marker.
Values are JSON.

Retention (KIP-211, `offsets.retention.minutes`): an offset of an empty or simple group
expires once `retention` has passed since the later of its commit and the moment the group
was first seen empty; an explicit expire time (v2-v4) wins when present. An active group
whose subscription is known loses offsets only for topics it no longer subscribes to,
counted from their commit (KIP-496's rule), so a live consumer never loses its position.

Clocks: stored times are wall-clock ms (they must survive restarts); decisions use the
coordinator's injected clock (`tick(now_ms)`), and a restored wall time is placed on that
clock by its age, so tests drive expiry with a fake clock.

Each group's writes are serialised by a per-group lock and applied in memory only once
durable: what OffsetFetch returns is always what a restart would replay, and the log order
of one group's keys equals the order the memory saw them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidelog.coordinator.coordinator import GroupCoordinator

log = logging.getLogger(__name__)

PREFIX = b"o/"
STAGED = b"p/"
"""Transactional offsets this group coordinator holds for a transaction coordinated on
another broker (`p/["group", producer id]`), until that coordinator's marker for the
group's `__consumer_offsets` partition commits or drops them (Kafka's design)."""
# How often `tick` looks for expired offsets and groups that emptied (Kafka's
# offsets.retention.check.interval.ms is 10 min; the scan here is cheap enough for less).
CHECK_INTERVAL_MS = 10_000

Entry = tuple[bytes, bytes | None]
CommitEntry = tuple[str, int, int, int, str | None]  # topic, partition, offset, epoch, metadata


@dataclass(slots=True)
class Committed:
    offset: int
    leader_epoch: int
    metadata: str
    commit_ms: int  # wall clock, stored
    expire_ms: int | None  # wall clock, stored (OffsetCommit v2-v4 retention time)
    since: int  # coordinator clock: the commit, the origin of retention
    expire_at: int | None  # coordinator clock: expire_ms placed on it

    def encode(self) -> bytes:
        return json.dumps({"offset": self.offset, "epoch": self.leader_epoch,
                           "metadata": self.metadata, "commit_ms": self.commit_ms,
                           "expire_ms": self.expire_ms}).encode()


def offset_key(group_id: str, topic: str, partition: int) -> bytes:
    return PREFIX + json.dumps([group_id, topic, partition]).encode()


def staged_key(group_id: str, producer_id: int) -> bytes:
    return STAGED + json.dumps([group_id, producer_id]).encode()


def marker_key(group_id: str) -> bytes:
    return PREFIX + json.dumps([group_id]).encode()


ACTIVE_MARKER = b'{"active": true}'


class _GroupLocks:
    """One asyncio.Lock per group, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, group_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(group_id) or (asyncio.Lock(), 0)
        self._locks[group_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[group_id]
            if users == 1:
                del self._locks[group_id]
            else:
                self._locks[group_id] = (lock, users - 1)


class OffsetStore:
    def __init__(self, coord: GroupCoordinator,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.coord = coord
        self.wall_clock = wall_clock
        self.check_interval_ms = CHECK_INTERVAL_MS
        self._offsets: dict[str, dict[tuple[str, int], Committed]] = {}
        self._active_marked: set[str] = set()  # marker says "active"
        self._empty_since: dict[str, int] = {}  # marker says "empty since" (coordinator clock)
        self._locks = _GroupLocks()
        self._next_check: int | None = None
        self._staged: dict[tuple[str, int], dict[tuple[str, int], CommitEntry]] = {}

    # -- reads --------------------------------------------------------------------------

    def fetch(self, group_id: str, topic: str, partition: int) -> tuple[int, int, str] | None:
        """(offset, leader epoch, metadata) committed for the partition, or None."""
        c = self._offsets.get(group_id, {}).get((topic, partition))
        return None if c is None else (c.offset, c.leader_epoch, c.metadata)

    def partitions(self, group_id: str) -> list[tuple[str, int]]:
        """Every (topic, partition) with a committed offset, sorted."""
        return sorted(self._offsets.get(group_id, {}))

    def groups(self) -> set[str]:
        """Groups with at least one committed offset."""
        return set(self._offsets)

    def staged_partitions(self, group_id: str) -> set[tuple[str, int]]:
        """Partitions of the group with offsets waiting in a transaction coordinated
        elsewhere (OffsetFetch require_stable answers UNSTABLE_OFFSET_COMMIT for them)."""
        return {tp for (g, _pid), entries in self._staged.items() if g == group_id
                for tp in entries}

    # -- transactional offsets coordinated elsewhere ---------------------------------------

    async def stage(self, group_id: str, producer_id: int, entries: list[CommitEntry]) -> None:
        """Hold a TxnOffsetCommit's offsets (durable) until the transaction's marker."""
        async with self._locks.hold(group_id):
            held = dict(self._staged.get((group_id, producer_id), {}))
            for e in entries:
                held[(e[0], e[1])] = e
            value = json.dumps([list(e) for e in held.values()]).encode()
            await self.coord.log.write([(staged_key(group_id, producer_id), value)])
            self._staged[(group_id, producer_id)] = held

    async def finish_staged(self, partition: int, producer_id: int, commit: bool) -> None:
        """A transaction marker for `__consumer_offsets-<partition>`: commit (or drop) what
        the producer staged for the groups of that partition."""
        for group_id, pid in [k for k in self._staged if k[1] == producer_id]:
            if self.coord.log.partition_for(group_id) != partition:
                continue
            entries = list(self._staged.get((group_id, pid), {}).values())
            if commit:
                await self.commit(group_id, entries)
            async with self._locks.hold(group_id):
                await self.coord.log.write([(staged_key(group_id, pid), None)])
                self._staged.pop((group_id, pid), None)

    # -- writes -------------------------------------------------------------------------

    async def commit(self, group_id: str, entries: list[CommitEntry],
                     retention_ms: int | None = None) -> None:
        """Make `entries` durable in one state-log write, then visible to `fetch`.

        `retention_ms` (OffsetCommit v2-v4) gives these offsets an explicit expire time.
        """
        if not entries:
            return
        async with self._locks.hold(group_id):
            now, wall = self.coord.now_ms(), self._wall_ms()
            keep = retention_ms if retention_ms is not None and retention_ms >= 0 else None
            new: dict[tuple[str, int], Committed] = {}
            for topic, partition, offset, epoch, metadata in entries:
                new[(topic, partition)] = Committed(
                    offset, epoch, metadata or "", wall, None if keep is None else wall + keep,
                    now, None if keep is None else now + keep)
            writes: list[Entry] = [(offset_key(group_id, t, p), c.encode())
                                   for (t, p), c in new.items()]
            active = self.coord.group_kind(group_id) is not None
            writes.extend(self._marker_change(group_id, active, wall))
            await self.coord.log.write(writes)
            self._offsets.setdefault(group_id, {}).update(new)
            self._note_activity(group_id, active, now)

    async def delete(self, group_id: str, partitions: Iterable[tuple[str, int]]) -> None:
        """Remove the offsets of `partitions` (OffsetDelete); unknown ones are ignored."""
        async with self._locks.hold(group_id):
            await self._remove(group_id, set(partitions))

    async def delete_group(self, group_id: str) -> None:
        """Remove every offset of the group (DeleteGroups)."""
        async with self._locks.hold(group_id):
            await self._remove(group_id, set(self._offsets.get(group_id, {})))

    async def _remove(self, group_id: str, partitions: set[tuple[str, int]],
                      extra: list[Entry] | None = None) -> None:
        """Tombstone `partitions` in one write with `extra` (the caller holds the group
        lock); the marker goes with the group's last offset."""
        offsets = self._offsets.get(group_id, {})
        gone = sorted(tp for tp in partitions if tp in offsets)
        writes: list[Entry] = list(extra or [])
        writes += [(offset_key(group_id, t, p), None) for t, p in gone]
        if gone and len(gone) == len(offsets):
            writes.append((marker_key(group_id), None))
        if not writes:
            return
        await self.coord.log.write(writes)
        for tp in gone:
            offsets.pop(tp, None)
        if not offsets:
            self._offsets.pop(group_id, None)
            self._active_marked.discard(group_id)
            self._empty_since.pop(group_id, None)

    # -- activity markers ---------------------------------------------------------------

    def _marker_change(self, group_id: str, active: bool, wall: int) -> list[Entry]:
        """The marker write needed after seeing the group active or not (if any)."""
        if active and group_id not in self._active_marked:
            return [(marker_key(group_id), ACTIVE_MARKER)]
        if not active and group_id in self._active_marked:
            return [(marker_key(group_id), json.dumps({"empty_since_ms": wall}).encode())]
        return []

    def _note_activity(self, group_id: str, active: bool, now: int) -> None:
        """Apply in memory what `_marker_change` wrote."""
        if active:
            self._active_marked.add(group_id)
            self._empty_since.pop(group_id, None)
        elif group_id in self._active_marked:
            self._active_marked.discard(group_id)
            self._empty_since[group_id] = now

    # -- retention ----------------------------------------------------------------------

    async def tick(self, now_ms: int) -> None:
        """Every `check_interval_ms`: note groups that emptied, expire old offsets."""
        if self._next_check is not None and now_ms < self._next_check:
            return
        self._next_check = now_ms + self.check_interval_ms
        await self.expire(now_ms)

    async def expire(self, now_ms: int) -> None:
        """One retention pass over every group (groups' writes run concurrently)."""
        jobs = []
        wall = self._wall_ms()
        for group_id in list(self._offsets):
            kind = self.coord.group_kind(group_id)
            if (self._marker_change(group_id, kind is not None, wall)
                    or self._expired(group_id, kind, now_ms)):
                jobs.append(self._expire_group(group_id, now_ms))
        for res in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(res, BaseException):
                log.error("offset expiry failed: %r", res)

    async def _expire_group(self, group_id: str, now_ms: int) -> None:
        async with self._locks.hold(group_id):
            kind = self.coord.group_kind(group_id)
            active = kind is not None
            marker = self._marker_change(group_id, active, self._wall_ms())
            expired = self._expired(group_id, kind, now_ms)
            if expired:
                log.info("group %s: %d committed offsets expired", group_id, len(expired))
            await self._remove(group_id, set(expired), marker)
            if group_id in self._offsets:
                self._note_activity(group_id, active, now_ms)

    def _expired(self, group_id: str, kind: str | None, now_ms: int) -> list[tuple[str, int]]:
        """The group's partitions whose offsets are past retention at `now_ms`."""
        offsets = self._offsets.get(group_id)
        if not offsets:
            return []
        retention = self.coord.config.offsets_retention_ms
        subscribed: set[str] | None = None
        floor: int | None = None
        if kind is not None:
            subscribed = self._subscribed(group_id, kind)
            if subscribed is None:
                return []  # active, subscription unknown: keep everything
        elif group_id in self._active_marked:
            floor = now_ms  # just seen empty: retention starts now
        else:
            floor = self._empty_since.get(group_id)  # None: a simple group
        out = []
        for tp, c in offsets.items():
            if subscribed is not None and tp[0] in subscribed:
                continue
            if c.expire_at is not None:
                if now_ms >= c.expire_at:
                    out.append(tp)
                continue
            base = c.since if floor is None else max(c.since, floor)
            if now_ms - base >= retention:
                out.append(tp)
        return out

    def _subscribed(self, group_id: str, kind: str) -> set[str] | None:
        if kind == "classic":
            return self.coord.classic.subscribed_topics(group_id)
        if kind == "consumer":
            return self.coord.consumer.subscribed_topics(group_id)
        return None

    # -- restore ------------------------------------------------------------------------

    def unload(self, belongs: Callable[[str], bool]) -> int:
        """Forget the offsets (and staged offsets) of the groups `belongs` names: their
        coordinator moved to another broker, which replays them."""
        gone = [g for g in self._offsets if belongs(g)]
        for g in gone:
            del self._offsets[g]
        self._active_marked = {g for g in self._active_marked if not belongs(g)}
        self._empty_since = {g: t for g, t in self._empty_since.items() if not belongs(g)}
        self._staged = {k: v for k, v in self._staged.items() if not belongs(k[0])}
        return len(gone)

    def restore(self, state: dict[bytes, bytes]) -> None:
        """Load offsets and markers (keys `o/...`) from a replayed state log."""
        now, wall = self.coord.now_ms(), self._wall_ms()
        loaded = 0
        for key, value in state.items():
            if key.startswith(STAGED):
                try:
                    group_id, pid = json.loads(key[len(STAGED):])
                    self._staged[(str(group_id), int(pid))] = {
                        (str(e[0]), int(e[1])): (str(e[0]), int(e[1]), int(e[2]), int(e[3]),
                                                 e[4])
                        for e in json.loads(value)}
                except (ValueError, TypeError, IndexError) as exc:
                    log.warning("ignoring unreadable staged offsets %r: %r", key, exc)
                continue
            if not key.startswith(PREFIX):
                continue
            try:
                parts = json.loads(key[len(PREFIX):])
                rec: dict[str, Any] = json.loads(value)
                if len(parts) == 3:
                    group_id, topic, partition = str(parts[0]), str(parts[1]), int(parts[2])
                    commit_ms = int(rec["commit_ms"])
                    expire_ms = rec.get("expire_ms")
                    self._offsets.setdefault(group_id, {})[(topic, partition)] = Committed(
                        int(rec["offset"]), int(rec["epoch"]), str(rec["metadata"]),
                        commit_ms, None if expire_ms is None else int(expire_ms),
                        min(now, now - (wall - commit_ms)),
                        None if expire_ms is None else now + (int(expire_ms) - wall))
                    loaded += 1
                elif len(parts) == 1:
                    if rec.get("active"):
                        self._active_marked.add(str(parts[0]))
                    else:
                        since = int(rec["empty_since_ms"])
                        self._empty_since[str(parts[0])] = min(now, now - (wall - since))
                else:
                    raise ValueError(f"{len(parts)} key parts")
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.warning("ignoring unreadable offset record %r: %r", key, exc)
        log.info("restored %d committed offsets of %d groups", loaded, len(self._offsets))

    def _wall_ms(self) -> int:
        return int(self.wall_clock() * 1000)
