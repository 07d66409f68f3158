from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidelog.protocol import records


def test_build_and_validate_roundtrip() -> None:
    b = records.build_batch([(b"k", b"v"), (None, b"x"), (b"k2", None)], timestamp=1234)
    [info] = records.validate(b)
    assert info.record_count == 3
    assert info.last_offset_delta == 2
    assert info.max_timestamp == 1234
    assert info.size == len(b)


def test_assign_offsets_rewrites_base_and_keeps_crc_valid() -> None:
    b1 = records.build_batch([(b"a", b"1")] * 2)
    b2 = records.build_batch([(b"b", b"2")] * 3)
    buf = bytearray(b1 + b2)
    infos = records.validate(buf)
    nxt = records.assign_offsets(buf, infos, 100, leader_epoch=7)
    assert nxt == 105
    again = records.validate(buf)  # the CRC does not cover baseOffset or the leader epoch
    assert [i.base_offset for i in again] == [100, 102]
    assert struct.unpack_from(">i", buf, 12)[0] == 7


def test_corrupt_crc_is_refused() -> None:
    buf = bytearray(records.build_batch([(b"k", b"value")]))
    buf[-1] ^= 0xFF
    with pytest.raises(records.CorruptRecordError):
        records.validate(buf)


def test_truncated_batch_is_refused() -> None:
    b = records.build_batch([(b"k", b"value")])
    with pytest.raises(records.CorruptRecordError):
        records.validate(b[:-3])
    with pytest.raises(records.CorruptRecordError):
        records.validate(b[:30])


def test_old_magic_is_refused() -> None:
    buf = bytearray(records.build_batch([(b"k", b"v")]))
    buf[16] = 1
    with pytest.raises(records.UnsupportedMagicError):
        records.validate(buf)


def test_empty_is_invalid() -> None:
    with pytest.raises(records.InvalidRecordError):
        records.validate(b"")


def test_iter_headers_ignores_partial_tail() -> None:
    b = records.build_batch([(b"k", b"v")])
    assert len(records.iter_headers(b + b + b[:20])) == 2


@given(st.binary(max_size=300))
def test_validate_never_crashes_on_garbage(data: bytes) -> None:
    with contextlib.suppress(records.InvalidRecordError):
        records.validate(data)
