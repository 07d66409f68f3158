"""Bad input gets the right error code or a closed connection; the broker keeps serving."""

from __future__ import annotations

import datetime
import struct

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.produce.v9 import request as produce_req

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient
from tidelog.protocol.records import build_batch


def healthy(broker: BrokerProcess) -> None:
    """A normal client still gets served."""
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert 0 in md.brokers


def produce_request(topic: str, records: bytes) -> produce_req.ProduceRequest:
    return produce_req.ProduceRequest(
        transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
        topic_data=(produce_req.TopicProduceData(name=topic, partition_data=(
            produce_req.PartitionProduceData(index=0, records=records),)),))


@pytest.fixture
def topic(broker: BrokerProcess) -> str:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # must outlive the future
    admin.create_topics([NewTopic("bad", 1, 1)])["bad"].result(10)
    return "bad"


def produce_error(broker: BrokerProcess, topic: str, records: bytes) -> ErrorCode:
    c = RawClient("127.0.0.1", broker.port)
    resp = c.request(produce_request(topic, records))
    c.close()
    return resp.responses[0].partition_responses[0].error_code


def test_corrupt_crc_gets_corrupt_message(broker: BrokerProcess, topic: str) -> None:
    batch = bytearray(build_batch([(b"k", b"v" * 100)]))
    batch[-5] ^= 0x55
    assert produce_error(broker, topic, bytes(batch)) == ErrorCode.corrupt_message
    good = build_batch([(b"k", b"v")])
    assert produce_error(broker, topic, good) == ErrorCode.none
    healthy(broker)


def test_truncated_batch_and_old_magic(broker: BrokerProcess, topic: str) -> None:
    batch = build_batch([(b"k", b"v" * 100)])
    assert produce_error(broker, topic, batch[:40]) == ErrorCode.corrupt_message
    old = bytearray(batch)
    old[16] = 1
    assert produce_error(broker, topic, bytes(old)) == ErrorCode.unsupported_version
    assert produce_error(broker, "no-such-topic", batch) == \
        ErrorCode.unknown_topic_or_partition
    healthy(broker)


def test_message_too_large(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory({"message.max.bytes": "1000"}).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("big", 1, 1)])["big"].result(10)
    batch = build_batch([(b"k", b"v" * 2000)])
    assert produce_error(broker, "big", batch) == ErrorCode.message_too_large
    healthy(broker)


def test_too_new_api_versions_gets_v0_error(broker: BrokerProcess) -> None:
    c = RawClient("127.0.0.1", broker.port)
    frame = bytearray(c.frame(ApiVersionsRequest(client_software_name="x",
                                                 client_software_version="1")))
    struct.pack_into(">h", frame, 6, 99)  # request_api_version
    c.send_raw(bytes(frame))
    data = c.read_frame()
    (corr, error_code) = struct.unpack_from(">ih", data, 0)
    assert corr == c.correlation
    assert error_code == ErrorCode.unsupported_version
    c.close()
    healthy(broker)


@pytest.mark.parametrize("garbage", [
    struct.pack(">i", 0x7FFFFFFF) + b"x" * 10,          # absurd size
    struct.pack(">i", -5),                              # negative size
    struct.pack(">i", 12) + struct.pack(">hhi", 999, 0, 1) + b"\0\0\0\0",  # unknown api
    struct.pack(">i", 12) + struct.pack(">hhi", 0, 99, 1) + b"\0\0\0\0",   # bad version
    struct.pack(">i", 10) + struct.pack(">hhi", 3, 9, 1) + b"\xff\xff",    # malformed body
])
def test_garbage_closes_only_that_connection(broker: BrokerProcess, garbage: bytes) -> None:
    bystander = RawClient("127.0.0.1", broker.port)
    c = RawClient("127.0.0.1", broker.port)
    c.send_raw(garbage)
    assert c.is_closed()
    c.close()
    resp = bystander.request(ApiVersionsRequest(client_software_name="x",
                                                client_software_version="1"))
    assert resp.error_code == ErrorCode.none
    bystander.close()
    healthy(broker)


def test_truncated_frame_then_disconnect(broker: BrokerProcess) -> None:
    c = RawClient("127.0.0.1", broker.port)
    c.send_raw(struct.pack(">i", 100) + b"\x00\x12\x00\x03")
    c.close()
    healthy(broker)
