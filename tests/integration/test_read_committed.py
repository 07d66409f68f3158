"""read_committed at the partition: the last stable offset, aborted transactions in Fetch,
ListOffsets by isolation level, and the transaction index across kill -9."""

from __future__ import annotations

import datetime
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v11 import request as fetch_req
from kio.schema.list_offsets.v5 import request as lo_req

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient
from tidelog.protocol import records

TOPIC = "rc"


def fetch(broker: BrokerProcess, isolation: int, offset: int = 0) -> Any:
    c = RawClient("127.0.0.1", broker.port)
    try:
        resp = c.request(fetch_req.FetchRequest(
            max_wait=datetime.timedelta(milliseconds=10), min_bytes=1, isolation_level=isolation,
            topics=(fetch_req.FetchTopic(topic=TOPIC, partitions=(fetch_req.FetchPartition(
                partition=0, fetch_offset=offset, partition_max_bytes=1 << 20),)),),
            forgotten_topics_data=(), rack_id=""))
    finally:
        c.close()
    return resp.responses[0].partitions[0]


def latest(broker: BrokerProcess, isolation: int) -> int:
    c = RawClient("127.0.0.1", broker.port)
    try:
        resp = c.request(lo_req.ListOffsetsRequest(
            replica_id=-1, isolation_level=isolation, topics=(lo_req.ListOffsetsTopic(
                name=TOPIC, partitions=(lo_req.ListOffsetsPartition(
                    partition_index=0, timestamp=-1),)),)))
    finally:
        c.close()
    part = resp.topics[0].partitions[0]
    assert part.error_code == ErrorCode.none
    return int(part.offset)


def batches(part: Any) -> list[records.BatchInfo]:
    return records.iter_headers(part.records or b"")


def values(broker: BrokerProcess, isolation: str, expected: int) -> list[bytes]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"rc-{isolation}",
                  "isolation.level": isolation, "enable.auto.commit": False})
    c.assign([TopicPartition(TOPIC, 0, 0)])
    out: list[bytes] = []
    for _ in range(30):
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            out.append(msg.value())
        elif len(out) >= expected:
            break
    c.close()
    return out


def test_lso_aborted_index_and_isolation_levels(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(10)
    tx = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "rc-tx",
                   "linger.ms": 0})
    tx.init_transactions(10)
    tx.begin_transaction()
    for i in range(3):
        tx.produce(TOPIC, f"a{i}".encode(), partition=0)
    tx.flush(10)
    assert latest(broker, 1) == 0  # the open transaction holds the LSO at its first offset
    part = fetch(broker, 1)
    assert part.last_stable_offset == 0 and part.high_watermark >= 3
    assert batches(part) == []
    tx.abort_transaction(10)
    aborted_end = latest(broker, 0)  # after the ABORT marker

    tx.begin_transaction()
    for i in range(3):
        tx.produce(TOPIC, f"c{i}".encode(), partition=0)
    tx.flush(10)
    hw = latest(broker, 0)
    assert latest(broker, 1) == aborted_end < hw
    committed = fetch(broker, 1)
    assert committed.last_stable_offset == aborted_end
    assert committed.high_watermark == hw
    [(first, pid)] = [(a.first_offset, a.producer_id) for a in committed.aborted_transactions]
    assert first == 0 and pid >= 0
    got = batches(committed)
    assert got and got[-1].last_offset < aborted_end and got[-1].is_control
    uncommitted = fetch(broker, 0)
    assert not uncommitted.aborted_transactions  # null for read_uncommitted
    assert batches(uncommitted)[-1].last_offset == hw - 1
    assert uncommitted.last_stable_offset == aborted_end
    tx.commit_transaction(10)
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(TOPIC, b"p0", partition=0)
    plain.flush(10)
    assert latest(broker, 1) == latest(broker, 0)

    assert values(broker, "read_committed", 4) == [b"c0", b"c1", b"c2", b"p0"]
    assert values(broker, "read_uncommitted", 7) == [
        b"a0", b"a1", b"a2", b"c0", b"c1", b"c2", b"p0"]

    broker.kill()  # the transaction index is rebuilt after a crash
    broker.start()
    again = fetch(broker, 1)
    assert [(a.producer_id, a.first_offset) for a in again.aborted_transactions] == [(pid, 0)]
    assert again.last_stable_offset == again.high_watermark
    assert fetch(broker, 1, offset=aborted_end).aborted_transactions == ()
    assert values(broker, "read_committed", 4) == [b"c0", b"c1", b"c2", b"p0"]
