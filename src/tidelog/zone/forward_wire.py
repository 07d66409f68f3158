"""Forward: a Tidelog inter-broker request (private API key 32000) by which a same-zone
proxy hands a partition's owner the batches a client produced through it, as positions
in the proxy's WAL on the shared volume, never the bytes (docs/design/0003-zones.md,
"Produce through a proxy").

Request: the proxy's node id, the client's acks and timeout, and per partition where
the proxy wrote the batch (position, length). Answer per partition: the Kafka error
code, base offset, log start offset, log append time and error message, as a Produce
response has them. Big-endian, version 0; a string is an i16 length (-1: null) and
UTF-8 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

FORWARD = 32000
VERSION = 0

_REQ_HEAD = struct.Struct(">ihii")  # proxy, acks, timeout ms, partitions
_REQ_PART = struct.Struct(">iqi")  # partition, position, length
_ANSWER = struct.Struct(">hqqq")  # error, base offset, log start offset, append time
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


class ForwardWireError(ValueError):
    """A Forward frame that does not parse."""


@dataclass(slots=True)
class ForwardPart:
    topic: str
    partition: int
    position: int
    length: int


@dataclass(slots=True)
class ForwardRequest:
    proxy: int
    acks: int
    timeout_ms: int
    parts: list[ForwardPart] = field(default_factory=list)


@dataclass(slots=True)
class ForwardAnswer:
    error: int
    base_offset: int = -1
    log_start_offset: int = -1
    log_append_time: int = -1
    message: str | None = None


def encode_request(req: ForwardRequest) -> bytes:
    out = bytearray(_REQ_HEAD.pack(req.proxy, req.acks, req.timeout_ms, len(req.parts)))
    for p in req.parts:
        _put_str(out, p.topic)
        out += _REQ_PART.pack(p.partition, p.position, p.length)
    return bytes(out)


def decode_request(buf: bytes | memoryview) -> ForwardRequest:
    try:
        proxy, acks, timeout, n = _REQ_HEAD.unpack_from(buf, 0)
        at = _REQ_HEAD.size
        req = ForwardRequest(proxy, acks, timeout)
        for _ in range(_count(n)):
            topic, at = _get_str(buf, at)
            if topic is None:
                raise ForwardWireError("null topic")
            partition, position, length = _REQ_PART.unpack_from(buf, at)
            at += _REQ_PART.size
            req.parts.append(ForwardPart(topic, partition, position, length))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ForwardWireError(f"malformed Forward request: {exc}") from None
    return req


def encode_answers(answers: list[ForwardAnswer]) -> bytes:
    out = bytearray(_I32.pack(len(answers)))
    for a in answers:
        out += _ANSWER.pack(a.error, a.base_offset, a.log_start_offset, a.log_append_time)
        _put_str(out, a.message)
    return bytes(out)


def decode_answers(buf: bytes | memoryview) -> list[ForwardAnswer]:
    try:
        (n,) = _I32.unpack_from(buf, 0)
        at = _I32.size
        out = []
        for _ in range(_count(n)):
            err, base, start, append_time = _ANSWER.unpack_from(buf, at)
            at += _ANSWER.size
            message, at = _get_str(buf, at)
            out.append(ForwardAnswer(err, base, start, append_time, message))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ForwardWireError(f"malformed Forward answer: {exc}") from None
    return out


def _count(n: int) -> int:
    if n < 0:
        raise ForwardWireError(f"negative count {n}")
    return n


def _put_str(out: bytearray, s: str | None) -> None:
    if s is None:
        out += _I16.pack(-1)
        return
    raw = s[:4000].encode()  # at most 16,000 bytes: within an i16
    out += _I16.pack(len(raw))
    out += raw


def _get_str(buf: bytes | memoryview, at: int) -> tuple[str | None, int]:
    (n,) = _I16.unpack_from(buf, at)
    at += _I16.size
    if n < 0:
        return None, at
    if at + n > len(buf):
        raise ForwardWireError("string out of bounds")
    return bytes(buf[at:at + n]).decode(), at + n
