"""The transaction coordinator: producer ids, epochs and the transactions of every
transactional id on this broker, durable in the internal topic `__transaction_state`.

Operations (one per request, serialised per transactional id by a lock):
- `init_producer_id`: a new producer id (idempotent producers), or the id's producer id
  with a bumped epoch (fencing the previous producer; an open transaction is aborted first).
  KIP-360: a producer that names its id and epoch recovers without being fenced when that
  epoch is the current one or the one before a coordinator bump.
- `add_partitions`, `add_offsets`, `txn_offset_commit`: grow the open transaction. Offsets
  committed in a transaction wait in its record and reach the group's committed offsets
  (`OffsetStore.commit`) only when it commits; an abort drops them.
- `end_txn`: PrepareCommit/PrepareAbort is made durable, the markers are written into every
  partition (`Partition.write_marker`), then CompleteCommit/CompleteAbort. The request is
  answered after completion; if a marker cannot be written the outcome is still decided,
  the state stays PrepareX and `tick` (or the next request for the id) finishes it.
- `tick`: aborts transactions open longer than their timeout (bumping the epoch, so the
  zombie producer is fenced), expires idle ids after `transactional.id.expiration.ms`, and
  finishes any PrepareX left behind.
Errors are Kafka error names (lowercase), None for success. Times are wall-clock ms from the
injected clock (they are stored and must mean the same after a restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from tidelog.coordinator.offsets import CommitEntry, OffsetStore
from tidelog.coordinator.state_log import StateLogs
from tidelog.coordinator.ticker import Ticker
from tidelog.coordinator.transactions_state import (
    IDLE,
    MAX_EPOCH,
    PREFIX,
    PREPARING,
    TxnMetadata,
    TxnState,
)
from tidelog.partition.topics import TopicManager

log = logging.getLogger(__name__)

TOPIC = "__transaction_state"

RemoteMarkers = Callable[[int, int, int, bool, int, list[tuple[str, int]]],
                         Awaitable[dict[tuple[str, int], "str | None"]]]
"""(owner node, producer id, epoch, commit, coordinator epoch, partitions) -> error by
partition (WriteTxnMarkers to the owner)."""
PID_BLOCK = 1000  # producer ids taken from the metadata store per allocation
PID_BLOCK_COUNTER = "producer_id_block"
NOT_HERE = "not_coordinator"


@dataclass(slots=True)
class TxnConfig:
    max_timeout_ms: int = 900_000  # transaction.max.timeout.ms
    id_expiration_ms: int = 7 * 24 * 3600 * 1000  # transactional.id.expiration.ms
    check_interval: float = 1.0  # how often `tick` runs (seconds)
    partitions: int = 1  # transaction.state.log.num.partitions (when the topic is created)


@dataclass(frozen=True, slots=True)
class InitResult:
    error: str | None
    producer_id: int = -1
    producer_epoch: int = -1


class TransactionCoordinator:
    def __init__(self, topics: TopicManager, offsets: OffsetStore,
                 config: TxnConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics
        self.offsets = offsets
        self.config = config or TxnConfig()
        self.clock = clock
        self.log = StateLogs(topics, topic=TOPIC, partitions=self.config.partitions)
        self._txns: dict[str, TxnMetadata] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pid_lock = asyncio.Lock()
        self._next_pid = 0
        self._pid_end = 0
        self._ticker = Ticker("txn-coordinator", self.tick, self.config.check_interval)
        self.remote_markers: RemoteMarkers | None = None
        """Cluster mode: ends the transaction in partitions other brokers own."""

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, create: bool = True) -> None:
        """Replay `__transaction_state`, finish transactions left in PrepareX, start ticking."""
        self._restore(await self.log.load(create))
        await self._finish_prepared()
        self._ticker.start()

    async def opened(self, topic: str, index: int) -> None:
        """A partition of `__transaction_state` was opened here after the start."""
        if topic == self.log.topic:
            self._restore(await self.log.load_partition(index))
            await self._finish_prepared()

    async def closed(self, topic: str, index: int) -> None:
        """A partition of `__transaction_state` is no longer served here: its
        transactional ids are unloaded (the new owner replays them and finishes any
        transaction left prepared)."""
        if topic != self.log.topic or not self.log.unload_partition(index):
            return
        gone = [t for t in self._txns if self.log.partition_for(t) == index]
        for t in gone:
            del self._txns[t]
        log.info("%s-%d unloaded: %d transactional ids", topic, index, len(gone))

    def owns(self, transactional_id: str) -> bool:
        """Whether the id's `__transaction_state` partition is loaded here. Checked under
        the id's lock by every request: one that waited for the lock while the partition
        moved away is told NOT_COORDINATOR (the client finds the new one), not that its
        producer id is unknown (fatal to the producer)."""
        return self.log.owns(transactional_id)

    def _restore(self, state: dict[bytes, bytes]) -> None:
        for key, value in state.items():
            if not key.startswith(PREFIX):
                continue
            try:
                m = TxnMetadata.decode(key, value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable transaction record %r: %r", key, exc)
                continue
            self._txns[m.transactional_id] = m
        log.info("restored %d transactional ids", len(self._txns))

    async def stop(self) -> None:
        await self._ticker.stop()

    # -- reads --------------------------------------------------------------------------

    def describe(self, transactional_id: str) -> TxnMetadata | None:
        m = self._txns.get(transactional_id)
        return None if m is None else m.copy()

    def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        """Partitions of `group_id` whose offsets wait in an unfinished transaction: a
        read_committed consumer must not start from the older committed offset
        (OffsetFetch answers UNSTABLE_OFFSET_COMMIT for them, KIP-447)."""
        out: set[tuple[str, int]] = self.offsets.staged_partitions(group_id)
        for m in self._txns.values():
            if m.state in (TxnState.ONGOING, TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT):
                out.update(m.offsets.get(group_id, {}))
        return out

    def all(self) -> list[TxnMetadata]:
        return [m.copy() for _, m in sorted(self._txns.items())]

    # -- InitProducerId -----------------------------------------------------------------

    async def init_producer_id(self, transactional_id: str | None, timeout_ms: int,
                               producer_id: int = -1, producer_epoch: int = -1) -> InitResult:
        if transactional_id is None:
            try:
                return InitResult(None, await self._new_pid(), 0)
            except Exception:
                log.exception("producer id allocation failed")
                return InitResult("coordinator_not_available")
        if not transactional_id:
            return InitResult("invalid_request")
        if not 0 < timeout_ms <= self.config.max_timeout_ms:
            return InitResult("invalid_transaction_timeout")
        async with self._lock(transactional_id):
            if not self.owns(transactional_id):
                return InitResult(NOT_HERE)
            try:
                return await self._init(transactional_id, timeout_ms, producer_id,
                                        producer_epoch)
            except Exception:
                log.exception("InitProducerId of %s failed", transactional_id)
                return InitResult("coordinator_not_available")

    async def _init(self, tid: str, timeout_ms: int, pid: int, epoch: int) -> InitResult:
        now = self.now_ms()
        m = self._txns.get(tid)
        if m is None:
            m = TxnMetadata(tid, await self._new_pid(), 0, timeout_ms, update_ms=now)
            await self._store(m)
            return InitResult(None, m.producer_id, m.producer_epoch)
        if m.state in PREPARING and not await self._try_complete(m):
            return InitResult("concurrent_transactions")
        m = self._txns[tid]
        if pid >= 0 and not self._known_producer(m, pid, epoch):
            return InitResult("producer_fenced")
        if m.state is TxnState.ONGOING:
            n = m.copy()
            self._bump(n)  # the markers carry the new epoch: the old producer is fenced
            await self._prepare(n, commit=False)
            if not await self._try_complete(self._txns[tid]):
                return InitResult("concurrent_transactions")
            m = self._txns[tid]
        n = m.copy()
        retry = pid >= 0 and pid == n.producer_id and epoch != n.producer_epoch \
            and epoch == n.last_epoch
        if not retry:
            if n.producer_epoch >= MAX_EPOCH - 1:
                n.prev_producer_id, n.producer_id = n.producer_id, await self._new_pid()
                n.producer_epoch, n.last_epoch = 0, -1
            else:
                self._bump(n)
        n.to(TxnState.EMPTY)
        n.timeout_ms, n.update_ms = timeout_ms, now
        n.partitions.clear()
        n.offsets.clear()
        await self._store(n)
        return InitResult(None, n.producer_id, n.producer_epoch)

    @staticmethod
    def _known_producer(m: TxnMetadata, pid: int, epoch: int) -> bool:
        """KIP-360: the (pid, epoch) a recovering producer names is current or just bumped."""
        if pid == m.producer_id:
            return epoch in (m.producer_epoch, m.last_epoch)
        return pid == m.prev_producer_id and m.producer_epoch == 0

    @staticmethod
    def _bump(m: TxnMetadata) -> None:
        if m.producer_epoch < MAX_EPOCH - 1:
            m.last_epoch, m.producer_epoch = m.producer_epoch, m.producer_epoch + 1

    async def _new_pid(self) -> int:
        """A producer id never handed out before: blocks of PID_BLOCK from a durable counter."""
        async with self._pid_lock:
            if self._next_pid >= self._pid_end:
                block = await self.topics.meta.next_id(PID_BLOCK_COUNTER)
                self._next_pid, self._pid_end = block * PID_BLOCK, (block + 1) * PID_BLOCK
            pid = self._next_pid
            self._next_pid += 1
            return pid

    # -- the open transaction -----------------------------------------------------------

    async def add_partitions(self, transactional_id: str, producer_id: int,
                             producer_epoch: int,
                             partitions: Iterable[tuple[str, int]]) -> str | None:
        """Add `partitions` (known to exist) to the transaction, opening it if needed."""
        wanted = set(partitions)
        async with self._lock(transactional_id):
            m, err = await self._current(transactional_id, producer_id, producer_epoch)
            if m is None:
                return err
            if m.state is TxnState.ONGOING and wanted <= m.partitions:
                return None
            n = self._open(m)
            n.partitions |= wanted
            return await self._store_or_error(n)

    async def add_offsets(self, transactional_id: str, producer_id: int, producer_epoch: int,
                          group_id: str) -> str | None:
        """Make `group_id`'s offsets part of the transaction (AddOffsetsToTxn)."""
        async with self._lock(transactional_id):
            m, err = await self._current(transactional_id, producer_id, producer_epoch)
            if m is None:
                return err
            if m.state is TxnState.ONGOING and group_id in m.offsets:
                return None
            n = self._open(m)
            n.offsets.setdefault(group_id, {})
            return await self._store_or_error(n)

    async def txn_offset_commit(self, transactional_id: str, producer_id: int,
                                producer_epoch: int, group_id: str,
                                entries: list[CommitEntry]) -> str | None:
        """Hold `entries` as the group's pending offsets until the transaction ends."""
        async with self._lock(transactional_id):
            m, err = await self._current(transactional_id, producer_id, producer_epoch)
            if m is None:
                return "invalid_producer_epoch" if err == "producer_fenced" else err
            if m.state is not TxnState.ONGOING:
                return "invalid_txn_state"
            n = m.copy()
            pending = n.offsets.setdefault(group_id, {})
            for topic, partition, offset, leader_epoch, metadata in entries:
                pending[(topic, partition)] = (offset, leader_epoch, metadata)
            n.update_ms = self.now_ms()
            return await self._store_or_error(n)

    async def end_txn(self, transactional_id: str, producer_id: int, producer_epoch: int,
                      commit: bool) -> str | None:
        """Commit or abort the open transaction; answered once its markers are written
        (or, if a partition refuses them for now, once the outcome is durable)."""
        async with self._lock(transactional_id):
            if not self.owns(transactional_id):
                return NOT_HERE
            m = self._txns.get(transactional_id)
            if m is None or m.producer_id != producer_id:
                return "invalid_producer_id_mapping"
            if m.producer_epoch != producer_epoch:
                return "producer_fenced"
            done = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
            prepared = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
            if m.state is done:
                return None  # a retry of the request that completed it
            if m.state is prepared:
                return None if await self._try_complete(m) else "concurrent_transactions"
            if m.state is not TxnState.ONGOING:
                return "invalid_txn_state"
            try:
                await self._prepare(m.copy(), commit)
            except Exception:
                log.exception("EndTxn of %s could not be prepared", transactional_id)
                return "coordinator_not_available"
            await self._try_complete(self._txns[transactional_id])
            return None

    async def _current(self, tid: str, pid: int, epoch: int
                       ) -> tuple[TxnMetadata | None, str | None]:
        """The id's metadata if (pid, epoch) is its producer and it can take additions."""
        if not self.owns(tid):
            return None, NOT_HERE
        m = self._txns.get(tid)
        if m is None or m.producer_id != pid:
            return None, "invalid_producer_id_mapping"
        if m.producer_epoch != epoch:
            return None, "producer_fenced"
        if m.state in PREPARING:
            if not await self._try_complete(m):
                return None, "concurrent_transactions"
            m = self._txns[tid]
        if m.state is TxnState.DEAD:
            return None, "invalid_producer_id_mapping"
        return m, None

    def _open(self, m: TxnMetadata) -> TxnMetadata:
        """A copy of `m` in Ongoing (a new transaction starts from an idle state)."""
        n = m.copy()
        now = self.now_ms()
        if n.state in IDLE:
            n.partitions.clear()
            n.offsets.clear()
            n.start_ms = now
        n.to(TxnState.ONGOING)
        n.update_ms = now
        return n

    # -- completion ---------------------------------------------------------------------

    async def _prepare(self, n: TxnMetadata, commit: bool) -> None:
        """Make the outcome durable (PrepareCommit/PrepareAbort) before any marker."""
        n.to(TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT)
        n.update_ms = self.now_ms()
        await self._store(n)

    async def _try_complete(self, m: TxnMetadata) -> bool:
        try:
            await self._complete(m)
            return True
        except Exception:
            log.exception("transaction %s: completing %s failed (retried)",
                          m.transactional_id, m.state.value)
            return False

    async def _complete(self, m: TxnMetadata) -> None:
        """Write the markers (and, on commit, the pending offsets), then CompleteX."""
        commit = m.state is TxnState.PREPARE_COMMIT
        coordinator_epoch = self.log.log_for(m.transactional_id).partition.leader_epoch
        jobs: list[Awaitable[object]] = []
        remote: dict[int, list[tuple[str, int]]] = {}
        for topic, index in sorted(m.partitions):
            p = self.topics.partition(topic, index)
            if p is not None:
                jobs.append(p.write_marker(m.producer_id, m.producer_epoch, commit,
                                           coordinator_epoch))
                continue
            t = self.topics.get(topic)
            owner = self.topics.leader(t, index)[0] if t is not None else -1
            if t is None or index >= t.count:
                log.warning("transaction %s: %s-%d is gone, no marker", m.transactional_id,
                            topic, index)
            elif owner < 0 or self.remote_markers is None:
                raise RuntimeError(f"{topic}-{index} has no leader for the marker yet")
            else:
                remote.setdefault(owner, []).append((topic, index))
        group_log = self.offsets.coord.log
        for group_id in sorted(m.offsets):
            index = group_log.partition_for(group_id)
            if index in group_log.logs:  # staged here too if a client sent it here
                jobs.append(self.offsets.finish_staged(index, m.producer_id, commit))
                continue
            t = self.topics.get(group_log.topic)
            owner = self.topics.leader(t, index)[0] if t is not None else -1
            if owner < 0 or self.remote_markers is None:
                raise RuntimeError(f"the coordinator of group {group_id!r} is not known yet")
            remote.setdefault(owner, []).append((group_log.topic, index))
        for node, parts in remote.items():
            jobs.append(self._remote(node, m, commit, coordinator_epoch, parts))
        for res in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(res, BaseException):
                raise res
        if commit:
            for group_id, pending in sorted(m.offsets.items()):
                await self.offsets.commit(group_id, [
                    (t, p, offset, epoch, meta)
                    for (t, p), (offset, epoch, meta) in sorted(pending.items())])
        n = m.copy()
        n.to(TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT)
        n.partitions.clear()
        n.offsets.clear()
        n.update_ms = self.now_ms()
        await self._store(n)
        log.info("transaction %s (pid %d epoch %d) %s", n.transactional_id, n.producer_id,
                 n.producer_epoch, "committed" if commit else "aborted")

    async def _remote(self, node: int, m: TxnMetadata, commit: bool, coordinator_epoch: int,
                      parts: list[tuple[str, int]]) -> None:
        assert self.remote_markers is not None
        errors = await self.remote_markers(node, m.producer_id, m.producer_epoch, commit,
                                           coordinator_epoch, parts)
        failed = {tp: e for tp, e in errors.items() if e is not None}
        if failed or len(errors) < len(parts):
            raise RuntimeError(f"markers on broker {node} failed: {failed}")

    async def _finish_prepared(self) -> None:
        for tid in [t for t, m in self._txns.items() if m.state in PREPARING]:
            lock = self._lock(tid)
            if lock.locked():
                continue
            async with lock:
                m = self._txns.get(tid)
                if m is not None and m.state in PREPARING:
                    await self._try_complete(m)

    # -- timers -------------------------------------------------------------------------

    async def tick(self) -> None:
        """Abort timed-out transactions, expire idle ids, finish stuck completions."""
        now = self.now_ms()
        for tid, m in list(self._txns.items()):
            if m.state is TxnState.ONGOING and now - m.start_ms > m.timeout_ms:
                await self._abort_timed_out(tid)
            elif m.state in IDLE and now - m.update_ms > self.config.id_expiration_ms:
                await self._expire(tid)
        await self._finish_prepared()

    async def _abort_timed_out(self, tid: str) -> None:
        async with self._lock(tid):
            m = self._txns.get(tid)
            if m is None or m.state is not TxnState.ONGOING or \
                    self.now_ms() - m.start_ms <= m.timeout_ms:
                return
            log.info("transaction %s (pid %d epoch %d) timed out after %d ms: aborting",
                     tid, m.producer_id, m.producer_epoch, m.timeout_ms)
            n = m.copy()
            self._bump(n)  # the producer that let it time out is fenced
            await self._prepare(n, commit=False)
            await self._try_complete(self._txns[tid])

    async def _expire(self, tid: str) -> None:
        async with self._lock(tid):
            m = self._txns.get(tid)
            if m is None or m.state not in IDLE or \
                    self.now_ms() - m.update_ms <= self.config.id_expiration_ms:
                return
            m.copy().to(TxnState.DEAD)  # checks the transition
            await self.log.write([(m.key(), None)])
            del self._txns[tid]
            log.info("transactional id %s expired", tid)


    # -- helpers ------------------------------------------------------------------------

    def _lock(self, tid: str) -> asyncio.Lock:
        lock = self._locks.get(tid)
        if lock is None:
            lock = self._locks[tid] = asyncio.Lock()
        return lock

    async def _store(self, n: TxnMetadata) -> None:
        """Durable first, then visible."""
        await self.log.write([(n.key(), n.encode())])
        self._txns[n.transactional_id] = n

    async def _store_or_error(self, n: TxnMetadata) -> str | None:
        try:
            await self._store(n)
        except Exception:
            log.exception("transaction %s: state write failed", n.transactional_id)
            return "coordinator_not_available"
        return None
