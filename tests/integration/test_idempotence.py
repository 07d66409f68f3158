"""Idempotent producers: retried batches are stored once, in order, across kill -9."""

from __future__ import annotations

import datetime
import signal
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.errors import ErrorCode
from kio.schema.produce.v9 import request as produce_req
from kio.schema.produce.v9.response import ProduceResponse

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient
from tidelog.protocol.records import build_batch


def create_topic(broker: BrokerProcess, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(10)


def idem_batch(pid: int, epoch: int, seq: int, n: int = 2) -> bytes:
    return build_batch([(None, f"{seq + j}".encode()) for j in range(n)],
                       timestamp=int(time.time() * 1000), producer_id=pid,
                       producer_epoch=epoch, base_sequence=seq)


def request(topic: str, batch: bytes) -> produce_req.ProduceRequest:
    return produce_req.ProduceRequest(
        transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10),
        topic_data=(produce_req.TopicProduceData(name=topic, partition_data=(
            produce_req.PartitionProduceData(index=0, records=batch),)),))


def answer(resp: ProduceResponse) -> tuple[ErrorCode, int]:
    part = resp.responses[0].partition_responses[0]
    return part.error_code, part.base_offset


def test_retries_are_deduplicated_and_gaps_refused(broker: BrokerProcess) -> None:
    create_topic(broker, "idem-raw")
    c = RawClient("127.0.0.1", broker.port)
    try:
        send = lambda pid, epoch, seq: answer(c.request(  # noqa: E731
            request("idem-raw", idem_batch(pid, epoch, seq))))
        assert send(4000, 0, 0) == (ErrorCode.none, 0)
        assert send(4000, 0, 0) == (ErrorCode.none, 0)  # the retry of a lost response
        assert send(4000, 0, 2) == (ErrorCode.none, 2)
        assert send(4000, 0, 0) == (ErrorCode.none, 0)  # still one of the last 5
        assert send(4000, 0, 6)[0] == ErrorCode.out_of_order_sequence_number
        assert send(4000, 1, 4)[0] == ErrorCode.out_of_order_sequence_number  # new epoch
        assert send(4000, 1, 0) == (ErrorCode.none, 4)
        assert send(4000, 0, 4)[0] == ErrorCode.invalid_producer_epoch
        # five requests in flight on one connection, two of them retries of the same batch
        seqs = [2, 4, 4, 6, 2]
        for s in seqs:
            c.send_raw(c.frame(request("idem-raw", idem_batch(4000, 1, s))))
        got = [answer(c.read_response(0, 9)) for _ in seqs]
        assert got == [(ErrorCode.none, o) for o in (6, 8, 8, 10, 6)]
        assert send(4000, 1, 8) == (ErrorCode.none, 12)  # nothing else took an offset
    finally:
        c.close()
    broker.kill()  # the producer state survives a crash: a retry is still a duplicate
    broker.start()
    c = RawClient("127.0.0.1", broker.port)
    try:
        assert answer(c.request(request("idem-raw", idem_batch(4000, 1, 8)))) == (
            ErrorCode.none, 12)
        assert answer(c.request(request("idem-raw", idem_batch(4000, 1, 12))))[0] == (
            ErrorCode.out_of_order_sequence_number)
        assert answer(c.request(request("idem-raw", idem_batch(4000, 1, 10)))) == (
            ErrorCode.none, 14)
    finally:
        c.close()


def produce_through(broker: BrokerProcess, topic: str, partitions: int, n: int,
                    disrupt: Callable[[], None], **conf: object) -> None:
    """Produce `n` numbered messages idempotently while `disrupt` runs (after 1 s and the
    first acknowledgement); then check every partition holds its numbers exactly once and
    in order."""
    producer = Producer({
        "bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
        "linger.ms": 5, "batch.num.messages": 50, "message.timeout.ms": 120_000,
        "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 500, **conf,
    })
    errors: list[object] = []
    delivered = [0]
    at_disruption: list[int] = []

    def cb(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[0] += 1

    def disruptor() -> None:
        time.sleep(1.0)
        deadline = time.monotonic() + 30  # on a loaded machine the first ack can be late
        while delivered[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        at_disruption.append(delivered[0])
        disrupt()

    t = threading.Thread(target=disruptor)
    t.start()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, str(i).encode(), partition=i % partitions,
                                 on_delivery=cb)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10 == 0:
            producer.poll(0)
            time.sleep(0.005)
    t.join()
    assert producer.flush(120) == 0
    assert errors == []
    assert 0 < at_disruption[0] < n  # the disruption came mid-stream, batches in flight

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "idem-check",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: dict[int, list[int]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + 60
    while sum(map(len, got.values())) < n and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        got[msg.partition()].append(int(msg.value()))
    time.sleep(1.0)  # anything beyond n would be a duplicate
    while (msg := consumer.poll(0.5)) is not None:
        if not msg.error():
            got[msg.partition()].append(int(msg.value()))
    consumer.close()
    for p in range(partitions):
        assert got[p] == list(range(p, n, partitions)), f"partition {p}"


def test_confluent_idempotent_producer_across_kill9(
        broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory().start()
    create_topic(broker, "idem-kill", 2)

    def kill_and_restart() -> None:
        broker.kill()
        time.sleep(0.5)
        broker.start()

    produce_through(broker, "idem-kill", 2, 6000, kill_and_restart)


def test_confluent_retries_after_lost_responses(broker: BrokerProcess) -> None:
    """A stalled broker (SIGSTOP) makes librdkafka time its requests out and resend them on
    a new connection; the stalled originals are appended when the broker resumes, so the
    resent batches are duplicates that must be answered, not stored again."""
    create_topic(broker, "idem-stall", 2)
    assert broker.proc is not None
    proc = broker.proc

    def stall() -> None:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(3.0)
        proc.send_signal(signal.SIGCONT)

    produce_through(broker, "idem-stall", 2, 6000, stall, **{"socket.timeout.ms": 1500})
