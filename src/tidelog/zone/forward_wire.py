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

from tidelog.zone.wire import I32, WireError, count, get_name, get_str, put_str

FORWARD = 32000
VERSION = 0

_REQ_HEAD = struct.Struct(">ihii")  # proxy, acks, timeout ms, partitions
_REQ_PART = struct.Struct(">iqi")  # partition, position, length
_ANSWER = struct.Struct(">hqqq")  # error, base offset, log start offset, append time




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
        put_str(out, p.topic)
        out += _REQ_PART.pack(p.partition, p.position, p.length)
    return bytes(out)


def decode_request(buf: bytes | memoryview) -> ForwardRequest:
    try:
        proxy, acks, timeout, n = _REQ_HEAD.unpack_from(buf, 0)
        at = _REQ_HEAD.size
        req = ForwardRequest(proxy, acks, timeout)
        for _ in range(count(n)):
            topic, at = get_name(buf, at)
            partition, position, length = _REQ_PART.unpack_from(buf, at)
            at += _REQ_PART.size
            req.parts.append(ForwardPart(topic, partition, position, length))
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"malformed Forward request: {exc}") from None
    return req


def encode_answers(answers: list[ForwardAnswer]) -> bytes:
    out = bytearray(I32.pack(len(answers)))
    for a in answers:
        out += _ANSWER.pack(a.error, a.base_offset, a.log_start_offset, a.log_append_time)
        put_str(out, a.message)
    return bytes(out)


def decode_answers(buf: bytes | memoryview) -> list[ForwardAnswer]:
    try:
        (n,) = I32.unpack_from(buf, 0)
        at = I32.size
        out = []
        for _ in range(count(n)):
            err, base, start, append_time = _ANSWER.unpack_from(buf, at)
            at += _ANSWER.size
            message, at = get_str(buf, at)
            out.append(ForwardAnswer(err, base, start, append_time, message))
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(f"malformed Forward answer: {exc}") from None
    return out

