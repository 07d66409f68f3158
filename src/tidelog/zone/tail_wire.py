"""TailIndex: a Tidelog inter-broker request (private API key 32001, only on connections
from other brokers) by which a broker serving a partition's fetches in its own zone asks
the partition's owner where the records are, never for the records themselves
(docs/design/0003-zones.md, "Fetch through a proxy").

Request: the fetch's wait, its isolation level, and per partition the fetch offset,
leader epoch and byte limit. Answer per partition: a Kafka error code, the high
watermark, last stable offset and log start, the first offset still only in the owner's
log cache (below it everything is in objects), the aborted transactions (read_committed)
and, from the fetch offset on, each durable record's offsets and its position and length
in the owner's WAL. About 40 bytes per record, against the record bytes themselves.

Big-endian, version 0; a string is an i16 length and UTF-8 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tidelog.zone.wire import I32, WireError, count, get_name, put_str

TAIL_INDEX = 32001
VERSION = 0

_REQ_HEAD = struct.Struct(">ibi")  # max wait ms, isolation, partitions
_REQ_PART = struct.Struct(">iqii")  # partition, fetch offset, leader epoch, max bytes
_ANS_HEAD = struct.Struct(">hqqqqii")  # error, hw, lso, start, cached from, aborted, entries
_ABORTED = struct.Struct(">qq")
_ENTRY = struct.Struct(">qqqi")  # base, last, position, length




@dataclass(slots=True)
class TailPart:
    topic: str
    partition: int
    fetch_offset: int
    leader_epoch: int = -1
    max_bytes: int = 1 << 20


@dataclass(slots=True)
class TailRequest:
    max_wait_ms: int
    committed: bool
    parts: list[TailPart] = field(default_factory=list)


@dataclass(slots=True)
class TailAnswer:
    error: int
    high_watermark: int = -1
    last_stable_offset: int = -1
    log_start_offset: int = -1
    cached_from: int = -1
    aborted: list[tuple[int, int]] = field(default_factory=list)
    """(producer id, first offset)."""
    entries: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(base offset, last offset, WAL position, length)."""


def encode_request(req: TailRequest) -> bytes:
    out = bytearray(_REQ_HEAD.pack(req.max_wait_ms, int(req.committed), len(req.parts)))
    for p in req.parts:
        put_str(out, p.topic)
        out += _REQ_PART.pack(p.partition, p.fetch_offset, p.leader_epoch, p.max_bytes)
    return bytes(out)


def decode_request(buf: bytes | memoryview) -> TailRequest:
    try:
        wait, isolation, n = _REQ_HEAD.unpack_from(buf, 0)
        at = _REQ_HEAD.size
        req = TailRequest(wait, isolation == 1)
        for _ in range(count(n)):
            topic, at = get_name(buf, at)
            partition, offset, epoch, max_bytes = _REQ_PART.unpack_from(buf, at)
            at += _REQ_PART.size
            req.parts.append(TailPart(topic, partition, offset, epoch, max_bytes))
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"malformed TailIndex request: {exc}") from None
    return req


def encode_answers(answers: list[TailAnswer]) -> bytes:
    out = bytearray(I32.pack(len(answers)))
    for a in answers:
        out += _ANS_HEAD.pack(a.error, a.high_watermark, a.last_stable_offset,
                              a.log_start_offset, a.cached_from, len(a.aborted),
                              len(a.entries))
        for pid, first in a.aborted:
            out += _ABORTED.pack(pid, first)
        for entry in a.entries:
            out += _ENTRY.pack(*entry)
    return bytes(out)


def decode_answers(buf: bytes | memoryview) -> list[TailAnswer]:
    try:
        (n,) = I32.unpack_from(buf, 0)
        at = I32.size
        out: list[TailAnswer] = []
        for _ in range(count(n)):
            err, hw, lso, start, cached, naborted, nentries = _ANS_HEAD.unpack_from(buf, at)
            at += _ANS_HEAD.size
            a = TailAnswer(err, hw, lso, start, cached)
            for _ in range(count(naborted)):
                a.aborted.append(_ABORTED.unpack_from(buf, at))
                at += _ABORTED.size
            for _ in range(count(nentries)):
                a.entries.append(_ENTRY.unpack_from(buf, at))
                at += _ENTRY.size
            out.append(a)
    except struct.error as exc:
        raise WireError(f"malformed TailIndex answer: {exc}") from None
    return out

