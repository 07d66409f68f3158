"""What producers send: values, keys, the `st` header and the partition of each record.

As the original: values are `--record-size` bytes whose first `--random-ratio` part is random
(a pool of `--random-pool-size` of them) and the rest zeros; keys are drawn from 16,384
random 10-character strings but do not choose the partition (the original sets
`partitioner.ignore.keys=true`): a producer sticks to a random partition for a batch, then
moves on (see `StickyPartitioner`). The original draws a random value and key per record;
our producers cycle through both in a shuffled order (the same mix, one C call a record).
"""

from __future__ import annotations

import base64
import random
import struct
from pathlib import Path

SEND_TIME_HEADER = "st"
PRESET_KEYS = 16384
_ST = struct.Struct(">q")
pack_send_time = _ST.pack  # `send_time_header` without the call, for hot loops


def send_time_header(epoch_ns: int) -> bytes:
    """The `st` header value: send time, 8-byte big-endian epoch nanoseconds."""
    return _ST.pack(epoch_ns)


def read_send_time(value: bytes) -> int:
    return int(_ST.unpack(value)[0])


def random_values(size: int, random_ratio: float, pool_size: int,
                  rng: random.Random | None = None) -> list[bytes]:
    r = rng or random.Random()
    random_bytes = int(size * random_ratio)
    static = bytes(size - random_bytes)
    if random_bytes == 0:
        return [static]
    return [r.randbytes(random_bytes) + static for _ in range(pool_size)]


def file_values(path: str) -> list[bytes]:
    """One value per line of `path` (without the line end); empty lines are skipped."""
    values = [line for line in Path(path).read_bytes().splitlines() if line]
    if not values:
        raise ValueError(f"{path}: no values (one a line)")
    return values


def preset_keys(rng: random.Random | None = None, count: int = PRESET_KEYS) -> list[bytes]:
    r = rng or random.Random()
    return [base64.urlsafe_b64encode(r.randbytes(7)).rstrip(b"=") for _ in range(count)]


class StickyPartitioner:
    """Stay on one partition until `batch_size` bytes went to it or `linger_ns` passed,
    then pick another at random (`batch_size` 0: a new partition for every record, as
    Java's batch.size=0). Bytes as the Java client; time as librdkafka's sticky
    partitioner, which is what keeps its one-partition-per-request batches large."""

    __slots__ = ("partitions", "batch_size", "linger_ns", "current", "filled", "since", "_rng")

    def __init__(self, partitions: int, batch_size: int, linger_ns: int,
                 rng: random.Random | None = None) -> None:
        if partitions < 1:
            raise ValueError("no partitions")
        self.partitions = partitions
        self.batch_size = batch_size
        self.linger_ns = linger_ns
        self._rng = rng or random.Random()
        self.current = self._rng.randrange(partitions)
        self.filled = 0
        self.since = 0

    def next(self, size: int, now_ns: int) -> int:
        """The partition of one record of `size` bytes sent at `now_ns`."""
        return self.span(size, now_ns, 1)[0]

    def span(self, size: int, now_ns: int, limit: int) -> tuple[int, int]:
        """The partition of the next records of `size` bytes sent at about `now_ns`, and how
        many of them (1 to `limit`) go there, the same as that many one-record calls would
        give (a sender asks once per run of records, not once per record)."""
        if self.filled > 0 and (self.filled >= self.batch_size
                                or now_ns - self.since >= self.linger_ns):
            self._switch()
        if self.filled == 0:
            self.since = now_ns
        room = self.batch_size - self.filled
        if self.linger_ns <= 0:  # no time on one partition: every record moves on
            count = 1
        else:
            count = max(1, min(limit, -(-room // size) if size > 0 else limit))
        self.filled += count * size
        return self.current, count

    def _switch(self) -> None:
        self.filled = 0
        if self.partitions > 1:
            nxt = self._rng.randrange(self.partitions - 1)
            self.current = nxt if nxt < self.current else nxt + 1
