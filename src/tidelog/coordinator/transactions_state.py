"""The state of one transactional id: Kafka's transaction state machine and the record
that makes it durable in `__transaction_state`.

States (Kafka's names, shown by DescribeTransactions/ListTransactions):
- Empty: an epoch is assigned, no transaction is open.
- Ongoing: partitions or groups were added; data may be in the log.
- PrepareCommit / PrepareAbort: the outcome is decided and durable; markers are being
  written (and, on commit, the pending group offsets made visible).
- CompleteCommit / CompleteAbort: markers are written; the next transaction may start.
- Dead: the id expired (`transactional.id.expiration.ms`); its key is tombstoned.

A PrepareX record is durable before any marker is written and a CompleteX record only
after every marker is, so a restart that finds PrepareX writes the markers again (a
repeated marker is harmless) and completes.

State-log key: `t/` + the transactional id; value JSON (pinned in the unit tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

PREFIX = b"t/"
MAX_EPOCH = 32767  # Short.MAX_VALUE: an epoch that reaches MAX_EPOCH - 1 moves to a new pid

# (group, topic, partition) -> (offset, leader epoch, metadata)
PendingOffsets = dict[str, dict[tuple[str, int], tuple[int, int, str | None]]]


class TxnState(Enum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"
    DEAD = "Dead"


S = TxnState
TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    S.EMPTY: frozenset({S.EMPTY, S.ONGOING, S.PREPARE_ABORT, S.DEAD}),
    S.ONGOING: frozenset({S.ONGOING, S.PREPARE_COMMIT, S.PREPARE_ABORT}),
    S.PREPARE_COMMIT: frozenset({S.COMPLETE_COMMIT}),
    S.PREPARE_ABORT: frozenset({S.COMPLETE_ABORT}),
    S.COMPLETE_COMMIT: frozenset({S.EMPTY, S.ONGOING, S.PREPARE_ABORT, S.DEAD}),
    S.COMPLETE_ABORT: frozenset({S.EMPTY, S.ONGOING, S.PREPARE_ABORT, S.DEAD}),
    S.DEAD: frozenset(),
}
PREPARING = frozenset({S.PREPARE_COMMIT, S.PREPARE_ABORT})
IDLE = frozenset({S.EMPTY, S.COMPLETE_COMMIT, S.COMPLETE_ABORT})


class IllegalTransition(Exception):
    pass


@dataclass(slots=True)
class TxnMetadata:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    last_epoch: int = -1  # the epoch before a coordinator bump (timeout abort, re-init)
    prev_producer_id: int = -1  # the pid before an epoch overflow moved to a new one
    partitions: set[tuple[str, int]] = field(default_factory=set)
    offsets: PendingOffsets = field(default_factory=dict)
    start_ms: int = -1  # wall clock: when the open transaction began
    update_ms: int = -1  # wall clock: last change

    def to(self, state: TxnState) -> None:
        """Move to `state` if the table allows it."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.transactional_id}: {self.state.value} -> "
                                    f"{state.value}")
        self.state = state

    def copy(self) -> TxnMetadata:
        return TxnMetadata(self.transactional_id, self.producer_id, self.producer_epoch,
                           self.timeout_ms, self.state, self.last_epoch,
                           self.prev_producer_id, set(self.partitions),
                           {g: dict(o) for g, o in self.offsets.items()},
                           self.start_ms, self.update_ms)

    def key(self) -> bytes:
        return PREFIX + self.transactional_id.encode()

    def encode(self) -> bytes:
        return json.dumps({
            "pid": self.producer_id, "epoch": self.producer_epoch,
            "last_epoch": self.last_epoch, "prev_pid": self.prev_producer_id,
            "timeout_ms": self.timeout_ms, "state": self.state.value,
            "partitions": sorted([t, p] for t, p in self.partitions),
            "offsets": {g: sorted([t, p, o, e, m] for (t, p), (o, e, m) in offs.items())
                        for g, offs in sorted(self.offsets.items())},
            "start_ms": self.start_ms, "update_ms": self.update_ms,
        }, sort_keys=True).encode()

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> TxnMetadata:
        rec: dict[str, Any] = json.loads(value)
        offsets: PendingOffsets = {}
        for group, rows in rec.get("offsets", {}).items():
            offsets[str(group)] = {(str(t), int(p)): (int(o), int(e), m)
                                   for t, p, o, e, m in rows}
        return cls(key[len(PREFIX):].decode(), int(rec["pid"]), int(rec["epoch"]),
                   int(rec["timeout_ms"]), TxnState(rec["state"]), int(rec["last_epoch"]),
                   int(rec["prev_pid"]),
                   {(str(t), int(p)) for t, p in rec.get("partitions", [])}, offsets,
                   int(rec["start_ms"]), int(rec["update_ms"]))
