"""Cluster mode through real clients: three broker processes over one PostgreSQL, one
WAL directory and one object store (started once for the module).

Every client is bootstrapped from one broker and must find the others on its own:
leaders spread over all three, produce and consume through any bootstrap broker, a group
whose coordinator is on one broker and whose partitions are on the others, commits that
survive a restart of every broker, topics created on one broker used through another,
object GC and compaction on the controller keeping every broker's data, a second broker
with a taken node.id refused, and a broker whose lease is revoked acknowledging nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess
from tests.integration.cluster import Cluster, acknowledges, wait_for
from tidelog.coordinator.state_log import partition_for
from tidelog.metadata.uri import open_metadata
from tidelog.partition.topics import TOPICS
from tidelog.stream.engine import STREAMS
from tidelog.stream.objects import meta_key
from tidelog.tools.local_postgres import LocalPostgres

PARTITIONS = 12

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    name = f"c_{uuid.uuid4().hex[:10]}"
    dsn = postgres.create_database(name)
    c = Cluster(tmp_path_factory.mktemp("cluster"), dsn, settings={
        "num.partitions": str(PARTITIONS),
        # small objects, compacted and collected quickly: the controller's jobs run often
        "object.compaction.interval.ms": "1000",
        "object.compaction.min.objects": "4",
        "log.segment.delete.delay.ms": "0",
        "orphan.stream.grace.ms": "2000",
    })
    try:
        yield c.start()
    finally:
        c.stop()
        postgres.drop_database(name)


def create(bootstrap: str, name: str, partitions: int = PARTITIONS) -> None:
    """Create a topic and wait until the creating broker knows every partition's leader
    (the other brokers learn of the owners' opens through their watches, moments later:
    clients retry a LEADER_NOT_AVAILABLE meanwhile)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions)], operation_timeout=20).values():
        f.result(30)
    wait_for(lambda: -1 not in leaders(bootstrap, name).values(), timeout=30,
             what=f"leaders of {name}")


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def produce(bootstrap: str, topic: str, values: list[bytes], **conf: object) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "linger.ms": 5, **conf})
    failed: list[object] = []
    for v in values:
        p.produce(topic, key=v, value=v,
                  on_delivery=lambda err, _m: failed.append(err) if err else None)
        p.poll(0)
    assert p.flush(30) == 0 and not failed, failed


def consume(bootstrap: str, topic: str, n: int, group: str | None = None,
            timeout: float = 60) -> list[tuple[int, int, bytes]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group or uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            out.append((m.partition(), m.offset(), m.value()))
        if group is not None:
            c.commit(asynchronous=False)
    finally:
        c.close()
    return out


def assert_once_and_dense(got: list[tuple[int, int, bytes]], values: list[bytes]) -> None:
    assert sorted(v for _, _, v in got) == sorted(values)  # every message, once
    by_partition: dict[int, list[int]] = {}
    for p, off, _ in got:
        by_partition.setdefault(p, []).append(off)
    for offsets in by_partition.values():
        assert sorted(offsets) == list(range(len(offsets)))  # dense from 0


def test_every_broker_listed_and_leaders_spread(cluster: Cluster) -> None:
    b1, b2, b3 = (cluster.brokers[n].bootstrap for n in (1, 2, 3))
    create(b2, "spread")
    for bootstrap in (b1, b2, b3):
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert sorted(md.brokers) == [1, 2, 3]
        assert md.controller_id in (1, 2, 3)
    # each broker learns the other brokers' opens through its watch: within moments
    wait_for(lambda: Counter(leaders(b3, "spread").values()) == {1: 4, 2: 4, 3: 4},
             timeout=5, what="every leader known to broker 3")
    admin = AdminClient({"bootstrap.servers": b1})  # kept alive until the answer
    described = admin.describe_cluster().result(10)
    assert {(n.id, n.rack) for n in described.nodes} == {(1, "a"), (2, "b"), (3, "c")}
    out = subprocess.run(["kcat", "-b", b3, "-L", "-t", "spread"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert " 3 brokers:" in out and out.count("leader ") == PARTITIONS
    for node in (1, 2, 3):
        assert f"broker {node} at {cluster.brokers[node].bootstrap}" in out


def test_confluent_through_every_bootstrap_broker(cluster: Cluster) -> None:
    create(cluster.brokers[1].bootstrap, "cc")
    values = []
    for node, b in cluster.brokers.items():
        batch = [f"{node}-{i}".encode() for i in range(500)]
        produce(b.bootstrap, "cc", batch)  # each producer knows only its bootstrap broker
        values += batch
    for b in cluster.brokers.values():
        assert_once_and_dense(consume(b.bootstrap, "cc", len(values)), values)


def test_kafka_python_produces_and_consumes(cluster: Cluster) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic as KNewTopic

    bootstrap = cluster.brokers[3].bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([KNewTopic("kp", PARTITIONS, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    values = [f"kp-{i}".encode() for i in range(1200)]
    for v in values:
        producer.send("kp", key=v, value=v)
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer("kp", bootstrap_servers=cluster.brokers[2].bootstrap,
                             auto_offset_reset="earliest", group_id="kp-group",
                             consumer_timeout_ms=15_000)
    got = []
    for m in consumer:
        got.append((m.partition, m.offset, m.value))
        if len(got) == len(values):
            break
    consumer.close()
    assert_once_and_dense(got, values)
    assert len({p for p, _, _ in got}) == PARTITIONS


def test_kcat_produces_and_consumes(cluster: Cluster) -> None:
    values = [f"kc-{i}" for i in range(600)]
    subprocess.run(["kcat", "-b", cluster.brokers[1].bootstrap, "-P", "-t", "kc", "-K", ":"],
                   input="".join(f"{v}:{v}\n" for v in values), text=True, timeout=60,
                   check=True)
    out = subprocess.run(["kcat", "-b", cluster.brokers[3].bootstrap, "-C", "-t", "kc",
                          "-o", "beginning", "-e", "-f", "%p %o %s\n"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    got = [(int(p), int(o), s.encode()) for p, o, s in
           (line.split(" ", 2) for line in out.splitlines() if line)]
    assert_once_and_dense(got, [v.encode() for v in values])
    assert Counter(leaders(cluster.brokers[2].bootstrap, "kc").values()) == {1: 4, 2: 4, 3: 4}


def test_topic_created_on_one_broker_is_used_through_another_within_a_second(
        cluster: Cluster) -> None:
    create(cluster.brokers[1].bootstrap, "fresh", 3)
    started = time.monotonic()
    wait_for(lambda: "fresh" in AdminClient({"bootstrap.servers": cluster.brokers[2].bootstrap})
             .list_topics(timeout=5).topics, timeout=5, what="broker 2 to know the topic")
    assert time.monotonic() - started < 1.0
    produce(cluster.brokers[2].bootstrap, "fresh", [b"x", b"y", b"z"])
    assert len(consume(cluster.brokers[3].bootstrap, "fresh", 3)) == 3


def test_an_acl_created_on_one_broker_is_enforced_by_another(cluster: Cluster) -> None:
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    create(cluster.brokers[1].bootstrap, "acl-t", 3)
    deny = AclBinding(ResourceType.TOPIC, "acl-t", ResourcePatternType.LITERAL,
                      "User:ANONYMOUS", "*", AclOperation.WRITE, AclPermissionType.DENY)
    admin2 = AdminClient({"bootstrap.servers": cluster.brokers[2].bootstrap})
    for f in admin2.create_acls([deny]).values():
        f.result(10)
    started = time.monotonic()

    def refused_by_3() -> bool:
        p = Producer({"bootstrap.servers": cluster.brokers[3].bootstrap,
                      "message.timeout.ms": 3000, "retries": 0})
        errors: list[object] = []
        p.produce("acl-t", value=b"x", partition=0, on_delivery=lambda e, _m: errors.append(e))
        p.flush(5)
        return bool(errors) and errors[0] is not None and \
            "authorization" in str(errors[0]).lower()

    try:
        wait_for(refused_by_3, timeout=10, what="broker 3 to enforce the ACL")
        assert time.monotonic() - started < 5  # one produce round trip after propagation
    finally:
        flt = AclBindingFilter(ResourceType.TOPIC, "acl-t", ResourcePatternType.LITERAL,
                               None, None, AclOperation.ANY, AclPermissionType.ANY)
        for f in admin2.delete_acls([flt]).values():
            with contextlib.suppress(KafkaException):
                f.result(10)
    wait_for(lambda: not refused_by_3(), timeout=10, what="broker 3 to drop the ACL")


def test_group_coordinated_on_one_broker_consumes_from_all_and_commits_survive_restart(
        cluster: Cluster) -> None:
    bootstrap = cluster.brokers[2].bootstrap
    create(bootstrap, "grp")
    values = [f"g-{i}".encode() for i in range(1200)]
    consumers = [Consumer({"bootstrap.servers": cluster.brokers[n].bootstrap,
                           "group.id": "cluster-group", "auto.offset.reset": "earliest",
                           "enable.auto.commit": False}) for n in (1, 2, 3)]
    got: list[tuple[int, int, bytes]] = []
    try:
        for c in consumers:
            c.subscribe(["grp"])

        def stable() -> bool:
            # Produce only once all three members share the partitions: a message read
            # before a rebalance is read again by its next owner (nothing is committed
            # yet), which is Kafka's at-least-once, not what this test is about.
            for c in consumers:
                c.poll(0.1)
            sizes = [len(c.assignment()) for c in consumers]
            return all(sizes) and sum(sizes) == PARTITIONS

        wait_for(stable, timeout=60, what="the group to assign every partition")
        produce(bootstrap, "grp", values)
        deadline = time.monotonic() + 60
        while len(got) < len(values) and time.monotonic() < deadline:
            for c in consumers:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    got.append((m.partition(), m.offset(), m.value()))
        assignments = [c.assignment() for c in consumers]
        for c in consumers:
            c.commit(asynchronous=False)
    finally:
        for c in consumers:
            c.close()
    assert_once_and_dense(got, values)
    assert all(assignments) and sum(len(a) for a in assignments) == PARTITIONS
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    group = admin.describe_consumer_groups(["cluster-group"])["cluster-group"].result(10)
    coordinator = group.coordinator.id
    assert set(leaders(bootstrap, "grp").values()) - {coordinator}  # partitions elsewhere too

    cluster.stop()  # every broker
    cluster.start()
    c = Consumer({"bootstrap.servers": cluster.brokers[3].bootstrap,
                  "group.id": "cluster-group"})
    try:
        committed = c.committed([TopicPartition("grp", i) for i in range(PARTITIONS)],
                                timeout=30)
    finally:
        c.close()
    ends = Counter(p for p, _, _ in got)
    assert {tp.partition: tp.offset for tp in committed} == {
        i: ends[i] for i in range(PARTITIONS)}


def test_a_coordinator_partition_taken_by_another_broker_is_unloaded_and_loaded_there(
        cluster: Cluster) -> None:
    """A `__consumer_offsets` partition given to another broker (in the metadata, as a
    move will): the old owner stops coordinating its groups (NOT_COORDINATOR), the new
    one replays them, and the committed offsets are found there."""
    bootstrap = cluster.brokers[1].bootstrap
    create(bootstrap, "moved", 3)
    produce(bootstrap, "moved", [f"m-{i}".encode() for i in range(30)])
    group = "moving-group"
    got = consume(bootstrap, "moved", 30, group=group)
    assert len(got) == 30
    ends = Counter(p for p, _, _ in got)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    old = admin.describe_consumer_groups([group])[group].result(10).coordinator.id
    index = partition_for(group, 6)
    sid_key = meta_key(STREAMS, _stream_of(cluster, "__consumer_offsets", index))
    tp = TopicPartition("__consumer_offsets", index)

    def uploaded() -> bool:  # the move of issue 21 flushes first; here the test waits
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
        try:
            _low, high = c.get_watermark_offsets(tp, timeout=10)
        finally:
            c.close()
        return json.loads(_meta_get(cluster, sid_key)[0])["end"] >= high

    wait_for(uploaded, timeout=30, what="the offsets partition to be uploaded")
    new_owner = next(n for n in cluster.brokers if n != old)

    async def give() -> None:
        store = open_metadata(cluster.dsn)
        try:
            entry = await store.get(sid_key)
            assert entry is not None
            rec = json.loads(entry.value)
            rec["owner"] = new_owner
            await store.put_if(sid_key, json.dumps(rec).encode(), entry.version)
        finally:
            await store.close()

    asyncio.run(give())
    wait_for(lambda: f"__consumer_offsets-{index} unloaded" in cluster.brokers[old].log(),
             timeout=10, what="the old coordinator to unload")

    def coordinator() -> int:
        # a new admin client each time: librdkafka's keeps the coordinator it found
        fresh = AdminClient({"bootstrap.servers": cluster.bootstrap})
        try:
            return fresh.describe_consumer_groups([group])[group].result(10).coordinator.id
        except KafkaException:  # NOT_COORDINATOR from the old one while the move settles
            return -1

    wait_for(lambda: coordinator() == new_owner, timeout=20, what="the new coordinator")
    c = Consumer({"bootstrap.servers": cluster.brokers[old].bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition("moved", i) for i in range(3)], timeout=30)
    finally:
        c.close()
    assert {t.partition: t.offset for t in committed} == {i: ends[i] for i in range(3)}


def _meta_get(cluster: Cluster, key: str) -> tuple[bytes, int]:
    async def get() -> tuple[bytes, int]:
        store = open_metadata(cluster.dsn)
        try:
            entry = await store.get(key)
            assert entry is not None, key
            return entry.value, entry.version
        finally:
            await store.close()

    return asyncio.run(get())


def _stream_of(cluster: Cluster, topic: str, index: int) -> int:
    return int(json.loads(_meta_get(cluster, f"{TOPICS}{topic}")[0])["streams"][index])


def test_streams_no_topic_names_are_swept_by_the_controller(cluster: Cluster) -> None:
    """A create cut short after its streams were written leaves streams no topic names:
    the controller deletes them after the grace period, and no other stream."""
    create(cluster.brokers[1].bootstrap, "kept", 3)

    async def orphans() -> list[str]:
        store = open_metadata(cluster.dsn)
        try:
            keys = []
            for topic in ("never-written", None):
                sid = await store.next_id("stream")
                value: dict[str, object] = {"epoch": 0, "start": 0, "end": 0}
                if topic is not None:
                    value["topic"] = topic
                key = meta_key(STREAMS, sid)
                await store.put_if(key, json.dumps(value).encode(), 0)
                keys.append(key)
            return keys
        finally:
            await store.close()

    tagged, untagged = asyncio.run(orphans())

    def exists(key: str) -> bool:
        return bool(cluster.sql("SELECT 1 FROM tidelog_kv WHERE key = $1", key))

    wait_for(lambda: not exists(tagged), timeout=20, what="the orphan stream to be swept")
    assert exists(untagged)  # it names no topic: reported, never deleted
    assert any("belongs to no topic and names none" in b.log()
               for b in cluster.brokers.values())
    for i in range(3):  # the streams of a live topic are untouched
        assert exists(meta_key(STREAMS, _stream_of(cluster, "kept", i)))
    produce(cluster.brokers[2].bootstrap, "kept", [b"still-served"])

    async def tidy() -> None:
        store = open_metadata(cluster.dsn)
        try:
            await store.delete(untagged)
        finally:
            await store.close()

    asyncio.run(tidy())


def test_gc_and_compaction_on_the_controller_keep_every_brokers_data(
        cluster: Cluster) -> None:
    """Before cluster mode every broker compacted and collected from the streams it had
    open: blocks of the others' streams were dropped from merged objects and their objects
    unlinked as unreferenced. Now only the controller does, from metadata."""
    bootstrap = cluster.brokers[1].bootstrap
    create(bootstrap, "keep")
    values = []
    for round_ in range(8):  # eight uploads per broker: small objects to merge
        batch = [f"k{round_}-{i}".encode() for i in range(120)]
        produce(bootstrap, "keep", batch)
        values += batch
        time.sleep(0.6)  # past upload.interval.ms
    logs = {n: b.log_path for n, b in cluster.brokers.items()}

    def controller_worked() -> bool:
        text = "".join(p.read_text(errors="replace") for p in logs.values())
        return "compacted" in text and "garbage objects past their grace period" in text

    wait_for(controller_worked, timeout=60, what="a compaction and a GC round")
    time.sleep(2)  # a few more rounds over the merged objects
    assert_once_and_dense(consume(cluster.brokers[2].bootstrap, "keep", len(values)), values)


def test_transactions_across_brokers_commit_and_abort(cluster: Cluster) -> None:
    bootstrap = cluster.brokers[2].bootstrap
    create(bootstrap, "txn")
    assert len(set(leaders(bootstrap, "txn").values())) == 3
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "cluster-txn"})
    p.init_transactions(30)
    p.begin_transaction()
    committed = [f"c-{i}".encode() for i in range(120)]
    for i, v in enumerate(committed):
        p.produce("txn", value=v, partition=i % PARTITIONS)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(120):
        p.produce("txn", value=f"a-{i}".encode(), partition=i % PARTITIONS)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()  # one more commit after the abort: the LSO moves past it
    p.produce("txn", value=b"last", partition=0)
    p.commit_transaction(30)
    c = Consumer({"bootstrap.servers": cluster.brokers[3].bootstrap, "group.id": "txn-read",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe(["txn"])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(committed) + 1 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
        extra = c.poll(1.0)  # nothing aborted follows
    finally:
        c.close()
    assert sorted(got) == sorted([*committed, b"last"])
    assert extra is None or extra.error() is not None


def test_transactional_offsets_when_group_and_transaction_coordinators_differ(
        cluster: Cluster) -> None:
    """The group coordinator holds the offsets until the transaction coordinator, on
    another broker, sends its marker for the group's __consumer_offsets partition."""
    from confluent_kafka import TopicPartition as TP

    from tidelog.coordinator.state_log import partition_for

    bootstrap = cluster.brokers[1].bootstrap
    produce(bootstrap, "txn", [b"warm"])  # both internal topics exist after the txn test
    groups = leaders(bootstrap, "__consumer_offsets")
    txns = leaders(bootstrap, "__transaction_state")
    tid = "eos-txn"
    group = next(g for g in (f"eos-group-{i}" for i in range(200))
                 if groups[partition_for(g, len(groups))] != txns[partition_for(tid, len(txns))])
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    p.init_transactions(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        for outcome, offset in (("abort", 5), ("commit", 7)):
            p.begin_transaction()
            p.produce("txn", value=f"eos-{outcome}".encode(), partition=1)
            p.send_offsets_to_transaction([TP("txn", 0, offset)],
                                          c.consumer_group_metadata(), 30)
            if outcome == "abort":
                p.abort_transaction(30)
            else:
                p.commit_transaction(30)
            (tp,) = c.committed([TP("txn", 0)], timeout=30)
            assert tp.offset == (offset if outcome == "commit" else -1001)
    finally:
        c.close()


def test_postgresql_restart_under_load_loses_nothing(cluster: Cluster,
                                                     postgres: LocalPostgres) -> None:
    """Produce goes on while the metadata database restarts (acknowledgements come from
    the WAL); the brokers reconnect, uploads resume, nothing acknowledged is lost."""
    import threading

    from tidelog.tools import local_postgres

    create(cluster.brokers[1].bootstrap, "pgload", 6)
    acked: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        p = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5,
                      "enable.idempotence": True})
        i = 0
        while not stop.is_set():
            p.produce("pgload", value=f"pg-{i}".encode(),
                      on_delivery=lambda err, m: acked.append(m.value()) if not err else None)
            i += 1
            p.poll(0.001)
        p.flush(30)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        wait_for(lambda: len(acked) > 200, what="acknowledgements before the restart")
        local_postgres.stop(postgres.data_dir)
        local_postgres.start(postgres.data_dir, port=postgres.port)
        restarted = len(acked)
        wait_for(lambda: len(acked) > restarted + 500, timeout=30,
                 what="produce to go on after the restart")
    finally:
        stop.set()
        writer.join(60)
    values = list(acked)
    got = consume(cluster.brokers[2].bootstrap, "pgload", len(values))
    assert set(values) <= {v for _, _, v in got}
    time.sleep(1.5)  # uploads resumed: the metadata store took their commits again
    for b in cluster.brokers.values():
        assert b.proc is not None and b.proc.poll() is None  # nobody gave up


def test_kill_9_of_a_broker_loses_no_acknowledged_record(cluster: Cluster) -> None:
    """A broker killed mid-produce comes back (after its previous lease expires) and
    replays its WAL: every acknowledged record is read back, offsets dense."""
    import threading

    create(cluster.brokers[1].bootstrap, "k9", 6)
    on_2 = [p for p, leader in leaders(cluster.brokers[1].bootstrap, "k9").items()
            if leader == 2]
    acked: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        p = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 2,
                      "enable.idempotence": True, "message.timeout.ms": 60_000})
        i = 0
        while not stop.is_set() and i < 20_000:
            p.produce("k9", value=f"k9-{i}".encode(), partition=on_2[i % len(on_2)],
                      on_delivery=lambda err, m: acked.append(m.value()) if not err else None)
            i += 1
            if i % 100 == 0:
                p.poll(0.005)
        p.flush(60)

    writer = threading.Thread(target=run)
    writer.start()
    try:
        wait_for(lambda: len(acked) > 500, what="acknowledgements before the kill")
        cluster.brokers[2].kill()
        before = len(acked)
        cluster.brokers[2].start(timeout=60)  # waits out the dead run's lease first
        wait_for(lambda: len(acked) > before + 100, timeout=60, what="produce to resume")
    finally:
        stop.set()
        writer.join(90)
    assert "still registered" in cluster.brokers[2].log()
    values = list(acked)
    got = consume(cluster.brokers[3].bootstrap, "k9", len(values))
    assert set(values) <= {v for _, _, v in got}
    by_partition: dict[int, list[int]] = {}
    for p, off, _ in got:
        by_partition.setdefault(p, []).append(off)
    for offsets in by_partition.values():
        assert sorted(offsets) == list(range(len(offsets)))


def test_a_taken_node_id_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    twin = BrokerProcess(tmp_path / "twin", {**cluster.brokers[2].settings,
                                             "data.dir": str(tmp_path / "twin")})
    with pytest.raises(RuntimeError, match="exited early"):
        twin.start(timeout=30)
    assert "node.id 2 is already registered by a live broker" in twin.log()
    # the running broker 2 is untouched
    produce(cluster.brokers[2].bootstrap, "cc", [b"still-here"])


def test_a_broker_whose_lease_is_revoked_acknowledges_nothing(cluster: Cluster) -> None:
    create(cluster.brokers[1].bootstrap, "fenced")
    on_3 = [p for p, leader in leaders(cluster.brokers[1].bootstrap, "fenced").items()
            if leader == 3]
    b3 = cluster.brokers[3]
    (row,) = cluster.sql("SELECT lease FROM tidelog_kv WHERE key = '/brokers/3'")
    cluster.sql("SELECT tidelog_revoke($1)", row["lease"])
    wait_for(lambda: "acknowledging nothing more" in b3.log(), timeout=10,
             what="broker 3 to notice")
    # straight to broker 3 (a real client would follow the partitions to their new
    # owners once the controller has the WAL taken over): it must not acknowledge
    for partition in on_3:
        assert not acknowledges(b3.port, "fenced", partition), partition
    assert b3.proc is not None and b3.proc.wait(30) == 1  # it stops, to be restarted
    b3.proc = None
    b3.start()  # back, as a supervisor would; the module's later tests see three again
    wait_for(lambda: 3 in AdminClient({"bootstrap.servers": cluster.brokers[1].bootstrap})
             .list_topics(timeout=5).brokers, what="broker 3 to rejoin")


def test_cluster_metrics_are_exported(cluster: Cluster) -> None:
    import re
    import urllib.request

    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    section = doc.split("\n## Cluster", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(tidelog_[a-z_]+)`", section, re.M))
    assert len(documented) >= 5
    controllers = 0
    for b in cluster.brokers.values():
        text = urllib.request.urlopen(b.metrics_url, timeout=10).read().decode()
        for name in documented:
            assert re.search(rf"^{name}(\{{| )", text, re.M), name
        controllers += int(float(re.search(r"^tidelog_controller (\S+)", text, re.M)[1]))
        lease = float(re.search(r"^tidelog_broker_lease_remaining_seconds (\S+)", text,
                                re.M)[1])
        assert lease > 0
    assert controllers == 1
