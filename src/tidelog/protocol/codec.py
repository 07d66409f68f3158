"""Kafka wire messages through `kio`: frames in, requests out; responses in, bytes out.

The only module that touches kio's schema loading and serialisers, so a kio upgrade changes
one file. No sockets here: `FrameReader` takes bytes and hands back whole frames (h11's
shape), and `encode_response` returns the bytes of one size-prefixed frame.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map, schema_name_map
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

SIZE = struct.Struct(">i")
FIXED_HEADER = struct.Struct(">hhi")  # api_key, api_version, correlation_id
API_VERSIONS_KEY = 18


class FrameError(Exception):
    """The byte stream is not Kafka framing: the connection must be closed."""


@dataclass(slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    client_host: str = ""
    """The peer's address as the listener saw it (DescribeGroups reports it)."""
    listener: str = "PLAINTEXT"
    """The listener the request came in on (Metadata answers with its endpoints)."""
    zone: str | None = None
    """The client's zone, when known (docs/design/0003-zones.md)."""


class FrameReader:
    """Splits a byte stream into frames, refusing a frame larger than `max_frame` before
    buffering it (so an absurd size prefix cannot make us allocate)."""

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        (size,) = SIZE.unpack_from(self._buf, 0)
        if size < FIXED_HEADER.size or size > self._max:
            raise FrameError(f"frame size {size} outside [8, {self._max}]")
        if len(self._buf) < 4 + size:
            return None
        frame = bytes(self._buf[4 : 4 + size])
        del self._buf[: 4 + size]
        return frame


def peek_header(frame: bytes) -> RequestHeader:
    """The fixed part of any request header (readable whatever the version)."""
    api_key, api_version, corr = FIXED_HEADER.unpack_from(frame, 0)
    return RequestHeader(api_key, api_version, corr, None)


def known_versions(api_key: int) -> tuple[int, int] | None:
    """The (min, max) versions kio has schemas for, or None for an unknown key."""
    name = api_key_map.get(api_key)
    if name is None:
        return None
    versions = schema_name_map[name]
    return min(versions), max(versions)


@cache
def _request_reader(api_key: int, version: int) -> tuple[Any, Any, Any]:
    schema = load_request_schema(api_key, version)
    header_schema = schema.__header_schema__
    return schema, entity_reader(header_schema), entity_reader(schema)


def decode_request(frame: bytes) -> tuple[RequestHeader, Any]:
    """Header and kio body of a request whose (key, version) the caller checked is served."""
    head = peek_header(frame)
    _schema, read_header, read_body = _request_reader(head.api_key, head.api_version)
    header, used = read_header(frame, 0)
    body, _ = read_body(frame, used)
    head.client_id = header.client_id
    return head, body


@cache
def _response_writer(schema: type) -> Any:
    return entity_writer(schema)


@cache
def response_schema(api_key: int, version: int) -> Any:
    return load_response_schema(api_key, version)


def _flexible_response_header(api_key: int, version: int) -> bool:
    # ApiVersions responses always use header v0, so a client that sent a too-new version
    # can still parse the error (KIP-511).
    if api_key == API_VERSIONS_KEY:
        return False
    return bool(response_schema(api_key, version).__flexible__)


def encode_response(api_key: int, version: int, correlation_id: int, body: Any) -> bytes:
    """One size-prefixed response frame."""
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00")
    out.write(struct.pack(">i", correlation_id))
    if _flexible_response_header(api_key, version):
        out.write(b"\x00")  # no tagged fields
    _response_writer(type(body))(out, body)  # type: ignore[arg-type]
    buf = out.getbuffer()
    SIZE.pack_into(buf, 0, len(buf) - 4)
    del buf
    return out.getvalue()


def encode_request(body: Any, correlation_id: int, client_id: str) -> bytes:
    """One size-prefixed request frame (the inter-broker client's side)."""
    header_cls = body.__header_schema__
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00")
    _response_writer(header_cls)(out, header_cls(
        request_api_key=body.__api_key__, request_api_version=body.__version__,
        correlation_id=correlation_id, client_id=client_id))
    _response_writer(type(body))(out, body)  # type: ignore[arg-type]
    buf = out.getbuffer()
    SIZE.pack_into(buf, 0, len(buf) - 4)
    del buf
    return out.getvalue()


PRIVATE_API_KEYS = range(32000, 32100)
"""Tidelog's inter-broker requests (docs/design/0003-zones.md): Kafka framing and a v1
request header (key, version, correlation id, client id), then a body of our own; the
response is the correlation id and a body. Never in ApiVersions: no client sends them."""
_I16 = struct.Struct(">h")


def encode_private_request(api_key: int, version: int, correlation_id: int,
                           client_id: str, body: bytes) -> bytes:
    cid = client_id.encode()
    head = FIXED_HEADER.pack(api_key, version, correlation_id) + _I16.pack(len(cid)) + cid
    return SIZE.pack(len(head) + len(body)) + head + body


def private_request(frame: bytes) -> tuple[RequestHeader, memoryview]:
    """The header and body of a private request frame (size prefix removed)."""
    head = peek_header(frame)
    at = FIXED_HEADER.size
    (n,) = _I16.unpack_from(frame, at)
    at += _I16.size
    if n > 0:
        if at + n > len(frame):
            raise FrameError("client id past the frame's end")
        head.client_id = frame[at:at + n].decode("utf-8", "replace")
        at += n
    return head, memoryview(frame)[at:]


def encode_private_response(correlation_id: int, body: bytes) -> bytes:
    return SIZE.pack(4 + len(body)) + SIZE.pack(correlation_id) + body


def response_correlation(frame: bytes) -> int:
    return int(SIZE.unpack_from(frame, 0)[0])


def decode_response(api_key: int, version: int, frame: bytes) -> Any:
    """The body of a response frame (size prefix removed) to a request of (key, version)."""
    offset = 4 + (1 if _flexible_response_header(api_key, version) else 0)
    body, _ = _response_reader(api_key, version)(frame, offset)
    return body


@cache
def _response_reader(api_key: int, version: int) -> Any:
    return entity_reader(response_schema(api_key, version))


__all__ = [
    "EntityType",
    "FrameError",
    "FrameReader",
    "RequestHeader",
    "decode_request",
    "decode_response",
    "encode_request",
    "response_correlation",
    "encode_response",
    "known_versions",
    "peek_header",
    "response_schema",
]
