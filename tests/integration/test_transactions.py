"""Transactions against a real broker process: confluent-kafka (librdkafka) and aiokafka
transactional producers, read_committed and read_uncommitted consumers, offsets sent to a
transaction, zombie fencing, and restarts (clean, and kill -9 with a transaction open)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.describe_transactions.v0.request import DescribeTransactionsRequest
from kio.schema.list_transactions.v0.request import ListTransactionsRequest

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient

PARTS = 3


def create_topic(bootstrap: str, name: str, partitions: int = PARTS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def txn_producer(bootstrap: str, tid: str, **conf: Any) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 5,
                  **conf})
    p.init_transactions(30)
    return p


def produce(p: Producer, topic: str, prefix: str, n: int) -> None:
    for i in range(n):
        p.produce(topic, value=f"{prefix}-{i}".encode(), partition=i % PARTS)
    p.flush(30)


def consume(bootstrap: str, topic: str, isolation: str, expected: int,
            timeout: float = 30) -> list[str]:
    """Values read from every partition's start until `expected` arrived, or the
    partitions' ends once they stay quiet (to show nothing more arrives)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, i, 0) for i in range(PARTS)])
    got: list[str] = []
    eof: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                if len(got) >= expected and len(eof) == PARTS:
                    break
                continue
            if msg.error() is not None:
                eof.add(msg.partition())
                continue
            eof.discard(msg.partition())
            got.append(msg.value().decode())
    finally:
        c.close()
    return got


def describe(broker: BrokerProcess, tid: str) -> Any:
    raw = RawClient("127.0.0.1", broker.port)
    try:
        return raw.request(DescribeTransactionsRequest(transactional_ids=(tid,))) \
            .transaction_states[0]
    finally:
        raw.close()


def expected(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def test_commit_and_abort_across_partitions(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "tx-out")
    p = txn_producer(broker.bootstrap, "tx-1")
    p.begin_transaction()
    produce(p, "tx-out", "c1", 30)
    p.commit_transaction(30)
    state = describe(broker, "tx-1")
    assert (state.error_code.value, state.transaction_state) == (0, "CompleteCommit")
    p.begin_transaction()
    produce(p, "tx-out", "a", 30)
    p.abort_transaction(30)
    p.begin_transaction()
    produce(p, "tx-out", "c2", 30)
    p.commit_transaction(30)
    committed = expected("c1", 30) + expected("c2", 30)
    assert sorted(consume(broker.bootstrap, "tx-out", "read_committed", 60)) == \
        sorted(committed)
    assert sorted(consume(broker.bootstrap, "tx-out", "read_uncommitted", 90)) == \
        sorted(committed + expected("a", 30))
    raw = RawClient("127.0.0.1", broker.port)
    try:
        listed = raw.request(ListTransactionsRequest(state_filters=(), producer_id_filters=()))
    finally:
        raw.close()
    assert [(t.transactional_id, t.transaction_state) for t in listed.transaction_states] == \
        [("tx-1", "CompleteCommit")]


def test_send_offsets_to_transaction(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "tx-in")
    create_topic(broker.bootstrap, "tx-out")
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(30):
        plain.produce("tx-in", value=f"in-{i}".encode(), partition=i % PARTS)
    plain.flush(30)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "cg",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed"})
    c.subscribe(["tx-in"])
    p = txn_producer(broker.bootstrap, "ctp")
    got = 0
    deadline = time.monotonic() + 60
    while got < 30 and time.monotonic() < deadline:
        msgs = c.consume(30, 1.0)
        if not msgs:
            continue
        p.begin_transaction()
        for m in msgs:
            assert m.error() is None, m.error()
            p.produce("tx-out", value=m.value().replace(b"in", b"out"), partition=m.partition())
        got += len(msgs)
        p.send_offsets_to_transaction(c.position(c.assignment()),
                                      c.consumer_group_metadata(), 30)
        p.commit_transaction(30)
    assert got == 30
    # one more transaction whose offsets are aborted: they must not become visible
    p.begin_transaction()
    p.produce("tx-out", value=b"never", partition=0)
    p.send_offsets_to_transaction([TopicPartition("tx-in", 0, 0)],
                                  c.consumer_group_metadata(), 30)
    p.abort_transaction(30)
    committed = c.committed([TopicPartition("tx-in", i) for i in range(PARTS)], 30)
    c.close()
    assert [tp.offset for tp in committed] == [10, 10, 10]
    assert sorted(consume(broker.bootstrap, "tx-out", "read_committed", 30)) == \
        sorted(expected("out", 30))


def test_second_producer_fences_the_first(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "tx-out")
    first = txn_producer(broker.bootstrap, "zombie")
    first.begin_transaction()
    produce(first, "tx-out", "zombie", 9)
    second = txn_producer(broker.bootstrap, "zombie")  # aborts the first's transaction
    second.begin_transaction()
    produce(second, "tx-out", "live", 9)
    second.commit_transaction(30)
    with pytest.raises(KafkaException) as exc:
        first.commit_transaction(10)
    assert exc.value.args[0].fatal() or "fenced" in str(exc.value).lower()
    assert sorted(consume(broker.bootstrap, "tx-out", "read_committed", 9)) == \
        sorted(expected("live", 9))


def test_restart_keeps_transaction_state(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "tx-out")
    p = txn_producer(broker.bootstrap, "durable")
    p.begin_transaction()
    produce(p, "tx-out", "c", 12)
    p.commit_transaction(30)
    before = describe(broker, "durable")
    broker.kill()
    broker.start()
    after = describe(broker, "durable")
    assert (after.transaction_state, after.producer_id, after.producer_epoch) == \
        ("CompleteCommit", before.producer_id, before.producer_epoch)
    again = txn_producer(broker.bootstrap, "durable")
    assert describe(broker, "durable").producer_epoch == before.producer_epoch + 1
    again.begin_transaction()
    produce(again, "tx-out", "d", 3)
    again.commit_transaction(30)
    assert sorted(consume(broker.bootstrap, "tx-out", "read_committed", 15)) == \
        sorted(expected("c", 12) + expected("d", 3))


def test_kill9_with_an_open_transaction_aborts_it_by_timeout(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "tx-out")
    p = txn_producer(broker.bootstrap, "open", **{"transaction.timeout.ms": 3000})
    p.begin_transaction()
    produce(p, "tx-out", "c", 6)
    p.commit_transaction(30)
    p.begin_transaction()
    produce(p, "tx-out", "open", 6)
    assert describe(broker, "open").transaction_state == "Ongoing"
    broker.kill()
    broker.start()
    deadline = time.monotonic() + 30
    while describe(broker, "open").transaction_state != "CompleteAbort":
        assert time.monotonic() < deadline, describe(broker, "open")
        time.sleep(0.2)
    assert sorted(consume(broker.bootstrap, "tx-out", "read_committed", 6)) == \
        sorted(expected("c", 6))


def test_aiokafka_transactions(broker: BrokerProcess) -> None:
    from aiokafka import AIOKafkaProducer

    create_topic(broker.bootstrap, "tx-out")

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="aio")
        await p.start()
        try:
            async with p.transaction():
                for i in range(9):
                    await p.send("tx-out", f"c-{i}".encode(), partition=i % PARTS)
            await p.begin_transaction()
            for i in range(9):
                await p.send("tx-out", f"a-{i}".encode(), partition=i % PARTS)
            await p.abort_transaction()
        finally:
            await p.stop()

    asyncio.run(run())
    assert sorted(consume(broker.bootstrap, "tx-out", "read_committed", 9)) == \
        sorted(expected("c", 9))
    assert sorted(consume(broker.bootstrap, "tx-out", "read_uncommitted", 18)) == \
        sorted(expected("c", 9) + expected("a", 9))


def test_pending_offsets_are_unstable_for_require_stable(broker: BrokerProcess) -> None:
    """KIP-447: while offsets wait in a transaction, OffsetFetch with require_stable answers
    UNSTABLE_OFFSET_COMMIT (a read_committed consumer must not start from the old offset)."""
    from kio.schema.errors import ErrorCode
    from kio.schema.offset_fetch.v7 import request as of

    create_topic(broker.bootstrap, "st-in")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "st-group"})
    p = txn_producer(broker.bootstrap, "st-tid")
    p.begin_transaction()
    p.send_offsets_to_transaction([TopicPartition("st-in", 0, 7)],
                                  c.consumer_group_metadata(), 30)

    def fetch(require_stable: bool) -> tuple[int, int]:
        raw = RawClient("127.0.0.1", broker.port)
        resp = raw.request(of.OffsetFetchRequest(group_id="st-group", topics=(
            of.OffsetFetchRequestTopic(name="st-in", partition_indexes=(0,)),),
            require_stable=require_stable))
        raw.close()
        part = resp.topics[0].partitions[0]
        return part.error_code, part.committed_offset

    assert fetch(True) == (ErrorCode.unstable_offset_commit, -1)
    assert fetch(False) == (ErrorCode.none, -1)  # not visible until the commit
    p.commit_transaction(30)
    assert fetch(True) == (ErrorCode.none, 7)
    c.close()


def test_cli_shows_open_transactions_and_lso_lag(broker: BrokerProcess) -> None:
    import subprocess
    import sys

    create_topic(broker.bootstrap, "cli-tx")
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for _ in range(4):  # committed before the transaction: below the LSO
        plain.produce("cli-tx", value=b"x", partition=0)
    plain.flush(10)
    p = txn_producer(broker.bootstrap, "cli-tid")
    p.begin_transaction()
    for i in range(5):
        p.produce("cli-tx", value=f"t{i}".encode(), partition=0)
    p.flush(10)

    def cli() -> str:
        return subprocess.run([sys.executable, "-m", "tidelog.cli", "transactions",
                               "--bootstrap-server", broker.bootstrap], check=True,
                              capture_output=True, text=True, timeout=60).stdout

    out = cli()
    assert "cli-tid  Ongoing" in out
    assert "cli-tx-0  high-watermark 9  last-stable 4  lso-lag 5" in out
    p.commit_transaction(30)
    assert cli().strip() == "no open transactions"
