"""The direct Fetch encoder produces exactly kio's bytes, for every version served."""

from __future__ import annotations

import datetime
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from tidelog.api.base import make, response_module
from tidelog.api.fetch import APIS
from tidelog.protocol.codec import encode_response
from tidelog.protocol.fetch_encoder import (
    MAX_VERSION,
    MIN_VERSION,
    PartitionOut,
    TopicOut,
    encode_fetch_response,
)


def kio_bytes(version: int, corr: int, topics: list[TopicOut], error: int,
              session: int) -> bytes:
    mod = response_module(1, version)
    resp = []
    for t in topics:
        parts = tuple(make(
            mod.PartitionData, partition_index=p.index, error_code=ErrorCode(p.error_code),
            high_watermark=p.high_watermark, last_stable_offset=p.last_stable_offset,
            log_start_offset=p.log_start_offset,
            aborted_transactions=None if p.aborted is None else tuple(
                make(mod.AbortedTransaction, producer_id=a, first_offset=b)
                for a, b in p.aborted),
            preferred_read_replica=p.preferred_read_replica,
            records=b"".join(bytes(r) for r in p.records)) for p in t.partitions)
        resp.append(make(mod.FetchableTopicResponse, topic=t.name, topic_id=t.topic_id,
                         partitions=parts))
    body = make(mod.FetchResponse, throttle_time=datetime.timedelta(0),
                error_code=ErrorCode(error), session_id=session, responses=tuple(resp),
                node_endpoints=())
    return encode_response(1, version, corr, body)


def test_served_versions_match_the_encoder() -> None:
    [api] = APIS
    assert (api.min_version, api.max_version) == (MIN_VERSION, MAX_VERSION)


partitions = st.builds(
    PartitionOut,
    index=st.integers(0, 1000),
    error_code=st.sampled_from([0, 1, 3, 70]),
    high_watermark=st.integers(-1, 2**40),
    last_stable_offset=st.integers(-1, 2**40),
    log_start_offset=st.integers(-1, 2**40),
    records=st.lists(st.binary(max_size=300).map(memoryview), max_size=3),
    aborted=st.none() | st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)),
                                 max_size=2),
    preferred_read_replica=st.just(-1),
)
topics = st.lists(st.builds(TopicOut, name=st.text("abc-._", min_size=1, max_size=20),
                            topic_id=st.uuids(), partitions=st.lists(partitions, max_size=4)),
                  max_size=3)


@pytest.mark.parametrize("version", range(MIN_VERSION, MAX_VERSION + 1))
@settings(max_examples=40, deadline=None)
@given(topics=topics, corr=st.integers(0, 2**31 - 1), error=st.sampled_from([0, 70]),
       session=st.integers(0, 2**31 - 1))
def test_bytes_equal_kio(version: int, topics: list[TopicOut], corr: int, error: int,
                         session: int) -> None:
    ours = b"".join(bytes(b) for b in encode_fetch_response(version, corr, topics, error,
                                                              session))
    assert ours == kio_bytes(version, corr, topics, error, session)


def test_records_are_not_copied() -> None:
    rec = bytearray(b"x" * 1000)
    out = encode_fetch_response(12, 1, [TopicOut("t", uuid.uuid4(), [
        PartitionOut(0, 0, 5, 5, 0, records=[rec])])])
    assert any(b is rec for b in out)
