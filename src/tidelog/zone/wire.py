"""What Tidelog's inter-broker bodies (`tail_wire`, `forward_wire`) share: big-endian
counts and strings (an i16 length, -1 for null, then UTF-8), and the error a frame that
does not parse raises."""

from __future__ import annotations

import struct

I16 = struct.Struct(">h")
I32 = struct.Struct(">i")


class WireError(ValueError):
    """An inter-broker frame that does not parse."""


def count(n: int) -> int:
    if n < 0:
        raise WireError(f"negative count {n}")
    return n


def put_str(out: bytearray, s: str | None) -> None:
    if s is None:
        out += I16.pack(-1)
        return
    raw = s[:4000].encode()  # at most 16,000 bytes: within an i16
    out += I16.pack(len(raw))
    out += raw


def get_str(buf: bytes | memoryview, at: int) -> tuple[str | None, int]:
    (n,) = I16.unpack_from(buf, at)
    at += I16.size
    if n < 0:
        return None, at
    if at + n > len(buf):
        raise WireError("string out of bounds")
    return bytes(buf[at:at + n]).decode(), at + n


def get_name(buf: bytes | memoryview, at: int) -> tuple[str, int]:
    """A string that may not be null (a topic name)."""
    s, at = get_str(buf, at)
    if s is None:
        raise WireError("null name")
    return s, at
