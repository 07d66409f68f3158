"""Producer state of one partition: idempotence (sequences) and transactions (markers).

Kafka 3.x rules (`ProducerStateManager` / `ProducerAppendInfo`): each producer id keeps its
epoch and the sequences and offsets of its last 5 batches. A retry of one of those batches
is a duplicate, answered with the original offsets and not appended. A lower epoch is
INVALID_PRODUCER_EPOCH; a new epoch must start at sequence 0; within an epoch a batch must
follow the last one (sequences wrap after 2^31-1), else OUT_OF_ORDER_SEQUENCE_NUMBER. An
unknown producer may start at any sequence. Transactional batches open a transaction
whose first offset holds the last stable offset back until a COMMIT or ABORT marker; aborted
transactions are indexed for read_committed fetches.

The state is rebuilt from batch headers alone (plus the 4-byte key of control records),
so a snapshot plus a scan of the log after it restores it exactly.
"""

from __future__ import annotations

import bisect
import json
import struct
from collections import deque
from dataclasses import dataclass, field

from tidelog.protocol.records import BatchInfo

MAX_SEQUENCE = 0x7FFFFFFF
KEEP_BATCHES = 5
NO_EPOCH = -1
ABORT, COMMIT = 0, 1
_CONTROL_KEY = struct.Struct(">hh")


class ProducerStateError(Exception):
    """A batch or marker the producer state refuses; `code` is the Kafka error name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DuplicateBatch(Exception):  # noqa: N818 - an outcome, not a failure
    """The batch repeats one already appended: answer with its offsets, append nothing."""

    def __init__(self, base_offset: int, last_offset: int) -> None:
        super().__init__(f"duplicate of the batch at {base_offset}")
        self.base_offset = base_offset
        self.last_offset = last_offset


def last_sequence(base_sequence: int, last_offset_delta: int) -> int:
    """Sequence of a batch's last record, wrapping after 2^31-1 like Kafka."""
    if base_sequence > MAX_SEQUENCE - last_offset_delta:
        return last_offset_delta - (MAX_SEQUENCE - base_sequence) - 1
    return base_sequence + last_offset_delta


def control_type(key: bytes | None) -> int:
    """ABORT or COMMIT from a control record's key (version int16, type int16)."""
    if key is None or len(key) < 4:
        return -1
    return int(_CONTROL_KEY.unpack_from(key)[1])


@dataclass(slots=True)
class ProducerEntry:
    epoch: int = NO_EPOCH
    batches: deque[tuple[int, int, int, int]] = field(
        default_factory=lambda: deque(maxlen=KEEP_BATCHES))
    """(first sequence, last sequence, base offset, last offset) of the last batches."""
    txn_first: int = -1
    """First offset of the open transaction, or -1."""
    coordinator_epoch: int = -1
    last_timestamp: int = -1

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches.clear()


class ProducerState:
    def __init__(self) -> None:
        self.producers: dict[int, ProducerEntry] = {}
        self.ongoing: dict[int, int] = {}
        """producer id -> first offset of its open transaction."""
        self.aborted: list[tuple[int, int, int]] = []
        """(producer id, first offset, marker offset) of aborted transactions, by marker."""
        self.changed = False

    # ---- produce path -----------------------------------------------------------------

    def append(self, b: BatchInfo, base: int) -> None:
        """Check an idempotent batch about to be appended at `base`, then record it.

        Raises `DuplicateBatch` or `ProducerStateError`; on success the state holds it.
        """
        pid, epoch, first_seq = b.producer_id, b.producer_epoch, b.base_sequence
        last_seq = last_sequence(first_seq, b.last_offset_delta)
        entry = self.producers.get(pid)
        if entry is not None:
            if epoch == entry.epoch:
                for f, la, bo, lo in entry.batches:
                    if f == first_seq and la == last_seq:
                        raise DuplicateBatch(bo, lo)
            if epoch < entry.epoch:
                raise ProducerStateError("invalid_producer_epoch", (
                    f"producer {pid}: epoch {epoch} is older than {entry.epoch}"))
            if epoch != entry.epoch:
                if first_seq != 0 and entry.epoch != NO_EPOCH:
                    raise ProducerStateError("out_of_order_sequence_number", (
                        f"producer {pid}: new epoch {epoch} starts at sequence {first_seq}"))
            else:
                last = entry.batches[-1][1] if entry.batches else -1
                if not (first_seq == last + 1 or (first_seq == 0 and last == MAX_SEQUENCE)):
                    raise ProducerStateError("out_of_order_sequence_number", (
                        f"producer {pid} epoch {epoch}: sequence {first_seq} after {last}"))
            if not b.is_transactional and entry.txn_first >= 0:
                raise ProducerStateError("invalid_txn_state", (
                    f"producer {pid}: non-transactional batch inside a transaction"))
        self.record(b, base, last_seq)

    def record(self, b: BatchInfo, base: int, last_seq: int | None = None) -> None:
        """Apply a data batch at `base` without checks (also the log replay)."""
        pid = b.producer_id
        entry = self.producers.get(pid)
        if entry is None:
            entry = self.producers[pid] = ProducerEntry()
        entry.set_epoch(b.producer_epoch)
        if last_seq is None:
            last_seq = last_sequence(b.base_sequence, b.last_offset_delta)
        entry.batches.append((b.base_sequence, last_seq, base, base + b.last_offset_delta))
        entry.last_timestamp = b.max_timestamp
        if b.is_transactional and entry.txn_first < 0:
            entry.txn_first = base
            self.ongoing[pid] = base
        self.changed = True

    # ---- transaction markers ----------------------------------------------------------

    def check_marker(self, pid: int, epoch: int, coordinator_epoch: int) -> None:
        entry = self.producers.get(pid)
        if entry is None:
            return
        if epoch < entry.epoch:
            raise ProducerStateError("invalid_producer_epoch", (
                f"producer {pid}: marker epoch {epoch} is older than {entry.epoch}"))
        if coordinator_epoch < entry.coordinator_epoch:
            raise ProducerStateError("transaction_coordinator_fenced", (
                f"producer {pid}: coordinator epoch {coordinator_epoch} is older than "
                f"{entry.coordinator_epoch}"))

    def marker(self, pid: int, epoch: int, kind: int, coordinator_epoch: int, offset: int,
               timestamp: int) -> None:
        """Apply a COMMIT/ABORT marker at `offset` (checked before, or replayed)."""
        entry = self.producers.get(pid)
        if entry is None:
            entry = self.producers[pid] = ProducerEntry()
        entry.set_epoch(epoch)
        if entry.txn_first >= 0:
            if kind == ABORT:
                self.aborted.append((pid, entry.txn_first, offset))
            entry.txn_first = -1
            self.ongoing.pop(pid, None)
        entry.coordinator_epoch = coordinator_epoch
        entry.last_timestamp = timestamp
        self.changed = True

    def last_stable_offset(self, high_watermark: int) -> int:
        if not self.ongoing:
            return high_watermark
        return min(high_watermark, min(self.ongoing.values()))

    def aborted_transactions(self, start: int, end: int) -> list[tuple[int, int]]:
        """(producer id, first offset) of aborted transactions overlapping [start, end)."""
        if not self.aborted:
            return []
        i = bisect.bisect_left(self.aborted, start, key=lambda a: a[2])
        return [(pid, first) for pid, first, _last in self.aborted[i:] if first < end]

    # ---- snapshots ----------------------------------------------------------------------

    def expire(self, now_ms: int, max_idle_ms: int) -> None:
        """Forget producers idle longer than `max_idle_ms` with no open transaction."""
        dead = [pid for pid, e in self.producers.items()
                if e.txn_first < 0 and now_ms - e.last_timestamp > max_idle_ms]
        for pid in dead:
            del self.producers[pid]

    def trim(self, log_start: int) -> None:
        """Drop aborted transactions wholly below the log start."""
        i = bisect.bisect_left(self.aborted, log_start, key=lambda a: a[2])
        if i:
            del self.aborted[:i]

    def drop_below(self, log_start: int) -> None:
        """The log start moved (retention, DeleteRecords): forget producers whose last
        batch is gone, as Kafka does; their next batch gets UNKNOWN_PRODUCER_ID and the
        client resets its sequence."""
        dead = [pid for pid, e in self.producers.items()
                if e.txn_first < 0 and e.batches and e.batches[-1][3] < log_start]
        for pid in dead:
            del self.producers[pid]
        self.trim(log_start)
        if dead:
            self.changed = True

    def to_json(self) -> dict[str, object]:
        return {
            "producers": {str(pid): [e.epoch, [list(b) for b in e.batches], e.txn_first,
                                     e.coordinator_epoch, e.last_timestamp]
                          for pid, e in self.producers.items()},
            "aborted": [list(a) for a in self.aborted],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ProducerState:
        state = cls()
        producers = data.get("producers", {})
        assert isinstance(producers, dict)
        for pid_s, (epoch, batches, txn_first, coord, ts) in producers.items():
            pid = int(pid_s)
            entry = ProducerEntry(epoch, deque((tuple(b) for b in batches),
                                               maxlen=KEEP_BATCHES), txn_first, coord, ts)
            state.producers[pid] = entry
            if txn_first >= 0:
                state.ongoing[pid] = txn_first
        aborted = data.get("aborted", [])
        assert isinstance(aborted, list)
        state.aborted = [(int(a[0]), int(a[1]), int(a[2])) for a in aborted]
        return state

    def dumps(self, as_of: int) -> bytes:
        return json.dumps({"as_of": as_of, **self.to_json()}).encode()
