"""Failover by WAL takeover (docs/design/0002-failover.md), on one 3-broker cluster for
the module with a 2 s lease: a broker killed with SIGKILL under an acks=all producer has
its WAL replayed into objects by a survivor and its partitions served by the others within
seconds; nothing acknowledged is lost; the dead broker comes back to an empty WAL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.cluster import Cluster, acknowledges, wait_for
from tests.integration.load import Load
from tidelog.controller.takeover import WalOwner, wal_key
from tidelog.metadata.uri import open_metadata
from tidelog.tools.local_postgres import LocalPostgres

PARTITIONS = 12

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    dsn = postgres.create_database(f"f_{uuid.uuid4().hex[:10]}")
    c = Cluster(tmp_path_factory.mktemp("failover"), dsn, settings={
        "broker.session.timeout.ms": "2000",
        "broker.heartbeat.interval.ms": "400",
        "upload.interval.ms": "2000",  # a tail left in the WAL for the taker to save
    })
    try:
        yield c.start()
    finally:
        c.stop()


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def create(boot: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": boot})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS)], operation_timeout=20).values():
        f.result(30)
    wait_for(lambda: -1 not in leaders(boot, topic).values(), timeout=30, what="leaders")


def controller(bootstrap: str) -> int:
    return int(AdminClient({"bootstrap.servers": bootstrap}).list_topics(
        timeout=10).controller_id)


def wal_owner(cluster: Cluster, node: int) -> WalOwner:
    async def get() -> WalOwner:
        store = open_metadata(cluster.dsn)
        try:
            entry = await store.get(wal_key(node))
            assert entry is not None
            return WalOwner.decode(node, entry.value, entry.version)
        finally:
            await store.close()

    return asyncio.run(get())


def _high_watermark(c: Consumer, topic: str, partition: int) -> int:
    """Retried while the partition changes owner (a balancer move after the restarts)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return int(c.get_watermark_offsets(TopicPartition(topic, partition),
                                               timeout=10)[1])
        except KafkaException as exc:
            err = exc.args[0]
            moving = err.code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                    KafkaError.LEADER_NOT_AVAILABLE)
            if not (moving or err.retriable()) or time.monotonic() > deadline:
                raise  # (librdkafka does not mark a ListOffsets NOT_LEADER retriable)
            time.sleep(0.2)


def read_all(bootstrap: str, topic: str,
             offsets: dict[int, list[int]] | None = None) -> dict[int, list[int]]:
    """Every record of every partition, up to the high watermarks read first (a count
    would stop short: records written but never acknowledged are there too); `offsets`
    gets each record's offset, in the same order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends = {p: _high_watermark(c, topic, p) for p in range(PARTITIONS)}
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: dict[int, list[int]] = {}
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 90
    try:
        while len(done) < PARTITIONS and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            if not m.value().startswith(b"filler"):
                out.setdefault(m.partition(), []).append(int(m.value().split(b"-")[1]))
                if offsets is not None:
                    offsets.setdefault(m.partition(), []).append(m.offset())
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    finally:
        c.close()
    assert len(done) == PARTITIONS, f"read to the end of {sorted(done)} only"
    return out


def kill_under_load(cluster: Cluster, topic: str, victim: int,
                    fail: Callable[[], None] | None = None,
                    resumed_then: Callable[[], None] | None = None,
                    **producer: object) -> dict[int, float]:
    """SIGKILL `victim` (or `fail` it another way) while the load runs; returns, per
    partition it led, the seconds from the failure to the first acknowledgement after it.
    `resumed_then` runs once all its partitions take writes again, under the load."""
    boot = next(b.bootstrap for n, b in cluster.brokers.items() if n != victim)
    create(boot, topic)
    led = [p for p, leader in leaders(boot, topic).items() if leader == victim]
    assert led, "the victim leads no partition"
    load = Load(cluster.bootstrap, topic, **producer)
    try:
        wait_for(lambda: len(load.acked) > 2000, timeout=60, what="load before the kill")
        killed = time.monotonic()
        (fail or cluster.brokers[victim].kill)()
        seen = len(load.acked)

        def resumed() -> bool:
            after = {p for p, n, _t in load.acked[seen:] if load.sent_at[n] > killed}
            return set(led) <= after

        wait_for(resumed, timeout=60, what="every partition of the dead broker to resume")
        if resumed_then is not None:
            resumed_then()
        wait_for(lambda: len(load.acked) > seen + 2000, timeout=60, what="more load")
    finally:
        load.stop()
    # the first acknowledgement of a record produced after the failure (a callback
    # after it may be for an answer the dead broker gave before)
    firsts = {p: min(t for q, n, t in load.acked if q == p and load.sent_at[n] > killed)
              - killed for p in led}
    assert not load.failed, f"{len(load.failed)} deliveries failed, first {load.failed[0]}"
    verify(load, boot, topic)
    return firsts


def verify(load: Load, boot: str, topic: str) -> None:
    acked = list(load.acked)
    offsets: dict[int, list[int]] = {}
    got = read_all(boot, topic, offsets)
    for p in range(PARTITIONS):
        numbers = {n for q, n, _t in acked if q == p}
        read = got.get(p, [])
        assert numbers <= set(read), f"partition {p}: acknowledged records lost"
        # Kafka's guarantee for an idempotent producer: what it was told is written is
        # in the order produced, once. Records whose fate it never learned (in flight to
        # a broker that stopped) may be in the log too; they are reported, not asserted.
        # Once a delivery times out (message.timeout.ms) the client bumps its producer
        # epoch and renumbers what it still holds, including records of a timed-out
        # request the broker may have written: those can be written twice (librdkafka's
        # "message timeout considerations"), so then only their first copies must keep
        # the order.
        kept = [n for n in read if n in numbers]
        firsts = list(dict.fromkeys(kept))
        if firsts != sorted(firsts) or (len(kept) != len(firsts) and not load.failed):
            raise AssertionError(f"partition {p}: acknowledged records out of order or "
                                 f"twice\n{_disorder(load, read, offsets.get(p, []), numbers)}")
        if len(kept) != len(firsts):
            print(f"partition {p}: {len(kept) - len(firsts)} acknowledged records written "
                  f"twice after {len(load.failed)} deliveries timed out")
        if read != sorted(read) or len(read) != len(set(read)):
            print(f"partition {p}: {len(read) - len(kept)} records never acknowledged are "
                  "in the log, not all in order")


def _disorder(load: Load, read: list[int], offsets: list[int], numbers: set[int]) -> str:
    """Where a partition's log breaks the order: the records around the first break,
    with their offsets and when they were sent and acknowledged."""
    acked_at = {n: t for _p, n, t in load.acked}
    seen: set[int] = set()
    last, i = -1, None
    for j, n in enumerate(read):
        if n in numbers and (n < last or n in seen):
            i = j
            break
        seen.add(n)
        if n in numbers:
            last = n
    if i is None:
        return "no break found"
    t0 = min(load.sent_at.values())
    lines = []
    for j in range(max(0, i - 12), min(len(read), i + 12)):
        n = read[j]
        lines.append(f"{'>' if j == i else ' '} offset {offsets[j]} record {n} sent "
                     f"{load.sent_at.get(n, 0) - t0:.3f} acked "
                     f"{'-' if n not in acked_at else f'{acked_at[n] - t0:.3f}'} "
                     f"copies {read.count(n)}")
    return "\n".join(lines)


def test_kill_9_of_a_partition_owner_fails_over_by_wal_takeover(cluster: Cluster) -> None:
    boot = cluster.brokers[1].bootstrap
    victim = next(n for n in (3, 2, 1) if n != controller(boot))
    before = wal_owner(cluster, victim).epoch
    firsts = kill_under_load(cluster, "failover-owner", victim)
    print(f"\nkill -9 of broker {victim} (2 s lease): first acknowledged produce per "
          f"partition after {sorted(round(s, 2) for s in firsts.values())} s")
    rec = wal_owner(cluster, victim)
    assert rec.done and rec.taker is not None and rec.taker != victim
    assert rec.epoch == before + 1
    taker_log = cluster.brokers[rec.taker].log()
    assert f"took over broker {victim}'s WAL" in taker_log
    saved = [line for line in taker_log.splitlines() if f"took over broker {victim}" in line]
    assert " 0 records" not in saved[-1]  # the unuploaded tail went into objects
    assert max(firsts.values()) < 15

    # back with the same node.id: its WAL was emptied, it starts afresh and serves again
    cluster.brokers[victim].start(timeout=60)
    assert "was taken over by broker" in cluster.brokers[victim].log()
    rec = wal_owner(cluster, victim)
    assert not rec.pending and rec.taker is None and rec.epoch == before + 2
    wait_for(lambda: victim in AdminClient({"bootstrap.servers": boot})
             .list_topics(timeout=5).brokers, what="the broker to rejoin")


def test_kill_9_of_the_controller_fails_over_too(cluster: Cluster) -> None:
    boot = cluster.brokers[1].bootstrap
    victim = controller(boot)
    firsts = kill_under_load(cluster, "failover-controller", victim)
    print(f"\nkill -9 of the controller, broker {victim}: first acknowledged produce per "
          f"partition after {sorted(round(s, 2) for s in firsts.values())} s")
    survivor = next(b.bootstrap for n, b in cluster.brokers.items() if n != victim)
    assert controller(survivor) not in (victim, -1)
    assert wal_owner(cluster, victim).done
    cluster.brokers[victim].start(timeout=60)


def test_a_broker_paused_past_its_lease_acknowledges_nothing_after_it(
        cluster: Cluster) -> None:
    """SIGSTOP past the lease: the others take its WAL and partitions over; on SIGCONT
    it answers no produce with success, gives up and exits (to be restarted)."""
    boot = cluster.brokers[1].bootstrap
    victim = next(n for n in (2, 3, 1) if n != controller(boot))
    b = cluster.brokers[victim]
    assert b.proc is not None
    pid = b.proc.pid

    def resume_and_probe() -> None:
        os.kill(pid, signal.SIGCONT)
        for partition in range(PARTITIONS):
            assert not acknowledges(b.port, "failover-paused", partition), partition

    firsts = kill_under_load(cluster, "failover-paused", victim,
                             fail=lambda: os.kill(pid, signal.SIGSTOP),
                             resumed_then=resume_and_probe,
                             # a stopped broker keeps its connections open: the client
                             # gives up on the requests it sent there after 5 s (their
                             # fate unknown) and resends them, same sequences, to the new
                             # owner, which has their records if the WAL had them and so
                             # answers them as duplicates: nothing fails, nothing twice
                             **{"socket.timeout.ms": 5000})
    print(f"\nSIGSTOP of broker {victim}: first acknowledged produce per partition after "
          f"{sorted(round(s, 2) for s in firsts.values())} s")
    assert b.proc.wait(30) == 1  # it gave up once it could run again
    assert "acknowledging nothing more" in b.log()
    b.proc = None
    assert wal_owner(cluster, victim).done
    b.start(timeout=60)


def test_a_partition_moves_in_seconds_through_kafka_python_and_the_cli(
        cluster: Cluster) -> None:
    """AlterPartitionReassignments (kafka-python's, as kafka-reassign-partitions.sh sends
    it) moves a partition holding data under load: the owner flushes its tail and hands
    it over, whatever it holds; the producer follows; nothing acknowledged is lost;
    `tidelog partitions move` moves it back."""
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.errors import InvalidReplicationAssignmentError

    boot = cluster.bootstrap
    topic = "moving"
    create(boot, topic)
    big = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 5})
    for i in range(2000):  # 20 MB in partition 0, some of it still in the WAL
        big.produce(topic, value=b"filler" * 2000, partition=0)
        if i % 100 == 0:
            big.poll(0)
    assert big.flush(60) == 0
    owner = leaders(boot, topic)[0]
    target = next(n for n in sorted(cluster.brokers) if n != owner)
    load = Load(boot, topic)
    admin = KafkaAdminClient(bootstrap_servers=boot)
    try:
        wait_for(lambda: len(load.acked) > 1000, timeout=60, what="load before the move")
        started = time.monotonic()
        result = admin.alter_partition_reassignments({KTopicPartition(topic, 0): [target]})
        assert result == {KTopicPartition(topic, 0): None}

        def moved() -> bool:
            return (leaders(boot, topic)[0] == target
                    and not admin.list_partition_reassignments([KTopicPartition(topic, 0)]))

        wait_for(moved, timeout=30, what="the move")
        took = time.monotonic() - started
        seen = len(load.acked)
        wait_for(lambda: any(p == 0 for p, _n, _t in load.acked[seen:]), timeout=30,
                 what="produce to the moved partition")
        bad = admin.alter_partition_reassignments({KTopicPartition(topic, 1): [1, 2]})
        assert bad[KTopicPartition(topic, 1)] is InvalidReplicationAssignmentError
        gone = admin.alter_partition_reassignments({KTopicPartition(topic, 1): [77]})
        assert gone[KTopicPartition(topic, 1)] is InvalidReplicationAssignmentError
    finally:
        admin.close()
        load.stop()
    print(f"\nmoved {topic}-0 (20 MB, under load) from broker {owner} to {target} in "
          f"{took:.2f}s (request to the new leader serving, as seen by a client)")
    assert took < 10
    verify(load, boot, topic)
    assert f"moved {topic}-0 to broker {target} in" in cluster.brokers[owner].log()

    cli = subprocess.run(
        [sys.executable, "-m", "tidelog.cli", "partitions", "move", f"{topic}:0", "--to",
         str(owner), "--wait", "30", "--bootstrap-server", cluster.brokers[target].bootstrap],
        capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    # done on the owners; a broker answering metadata follows within its watch's lag
    wait_for(lambda: leaders(boot, topic)[0] == owner, timeout=10, what="metadata to follow")
    wrong = subprocess.run(
        [sys.executable, "-m", "tidelog.cli", "partitions", "move", f"{topic}:0", "--to",
         "77", "--bootstrap-server", boot], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "broker 77 is not live" in wrong.stderr


def move_to(boot: str, topic: str, partition: int, target: int) -> None:
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=boot)
    try:
        admin.alter_partition_reassignments({KTopicPartition(topic, partition): [target]})
    finally:
        admin.close()
    wait_for(lambda: leaders(boot, topic)[partition] == target, timeout=30,
             what=f"{topic}-{partition} on broker {target}")


def test_transactions_in_flight_move_with_their_partitions(cluster: Cluster) -> None:
    """A transaction open on a partition (and its coordinator's partition) while both
    move: the producer follows, commits, and read_committed sees exactly the committed
    records; an abort after a move hides its records and does not hold the LSO back."""
    from tidelog.coordinator.state_log import partition_for

    boot = cluster.bootstrap
    topic = "txn-moving"
    create(boot, topic)
    tid = "txn-that-moves"
    p = Producer({"bootstrap.servers": boot, "transactional.id": tid})
    p.init_transactions(30)
    states = leaders(boot, "__transaction_state")
    state = partition_for(tid, len(states))

    def elsewhere(now: int) -> int:
        return next(n for n in sorted(cluster.brokers) if n != now)

    committed: list[bytes] = []
    p.begin_transaction()
    for i in range(50):
        committed.append(f"c1-{i}".encode())
        p.produce(topic, value=committed[-1], partition=i % 2)
    p.flush(30)  # in the log, the transaction open
    move_to(boot, topic, 0, elsewhere(leaders(boot, topic)[0]))
    move_to(boot, "__transaction_state", state, elsewhere(states[state]))
    for i in range(50):
        committed.append(f"c2-{i}".encode())
        p.produce(topic, value=committed[-1], partition=i % 2)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(50):
        p.produce(topic, value=f"aborted-{i}".encode(), partition=i % 2)
    p.flush(30)
    move_to(boot, topic, 1, elsewhere(leaders(boot, topic)[1]))
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, value=b"last", partition=1)
    committed.append(b"last")
    p.commit_transaction(30)

    c = Consumer({"bootstrap.servers": boot, "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(committed) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
        extra = c.poll(1.0)  # nothing aborted follows
    finally:
        c.close()
    assert sorted(got) == sorted(committed)
    assert extra is None or extra.error() is not None


def test_wal_record_round_trip() -> None:
    rec = WalOwner(4, 7, "file:///w/broker-4.wal", "b", taker=2, done=True, version=9)
    assert WalOwner.decode(4, rec.encode(), 9) == rec
    assert json.loads(WalOwner(4, 1).encode()) == {"epoch": 1, "owner": 4}
