"""Zone routing (`zone.routing.enable`, docs/design/0003-zones.md): a zoned client is told
that a broker of its own zone leads every partition; produce is written there and its
owner, in whatever zone, reads the batch from that broker's WAL on the shared volume;
fetch is served there. Through real clients against 3 brokers in zones a, b, c (one each,
a listener per zone), a producer and a consumer group per zone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.integration.cluster import wait_for
from tests.integration.load import Load
from tests.integration.test_failover import verify
from tests.integration.zoned import (
    SIZE,
    TailingConsumer,
    ZonedCluster,
    create,
    every_zone_reads_everything,
    produce_numbered,
    produce_transactions,
    zoned_cluster,
)
from tidelog.tools.local_postgres import LocalPostgres
from tidelog.tools.status import scrape as status_scrape

pytestmark = pytest.mark.timeout(240)
PER_ZONE = 3000


@pytest.fixture(scope="module")
def routed(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ZonedCluster]:
    yield from zoned_cluster(postgres, tmp_path_factory, "routing",
                             settings={"zone.routing.enable": "true"})


def listeners(z: ZonedCluster) -> dict[str, str]:
    return {"a": z.bootstrap(z.za), "b": z.bootstrap(z.zb), "c": z.bootstrap(z.zc)}


def test_a_zoned_client_sees_its_zone_broker_lead_every_partition(routed: ZonedCluster) -> None:
    topic = "routed-md"
    create(routed.cluster.bootstrap, topic)

    def leaders(bootstrap: str) -> set[int]:
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
        return {p.leader for p in md.topics[topic].partitions.values()}

    # zoneless: the owners (once every owner has opened its new partitions)
    wait_for(lambda: leaders(routed.cluster.bootstrap) == {1, 2, 3}, timeout=20,
             what="the owners to open the partitions")
    for zone, node in (("a", 1), ("b", 2), ("c", 3)):
        assert leaders(listeners(routed)[zone]) == {node}, zone


def test_every_zone_produces_and_consumes_with_no_record_byte_crossing_zones(
        routed: ZonedCluster) -> None:
    """A producer and a consumer group per zone on a 12-partition topic: each group reads
    every record once; the record bytes that crossed zones, client to broker or broker to
    broker, are printed against the client record bytes (target <= 0.5%)."""
    topic = "routed"
    create(routed.cluster.bootstrap, topic)
    boots = listeners(routed)
    before, broker_before = routed.zone_bytes(), routed.zone_bytes("broker")
    proxied_before, wal_before = total(routed, "tidelog_zone_produce_bytes_total"), total(
        routed, "tidelog_wal_bytes_written_total")
    every_zone_reads_everything(boots, topic, PER_ZONE)
    after, broker_after = routed.zone_bytes(), routed.zone_bytes("broker")
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    data = sum(v for (_s, _d, kind), v in delta.items() if kind == "data")
    crossing = sum(v for (s, d, kind), v in delta.items() if kind == "data" and s != d)
    broker = {k: v - broker_before.get(k, 0.0) for k, v in broker_after.items()}
    broker_data = sum(v for (_s, _d, kind), v in broker.items() if kind == "data")
    control = sum(v for (s, d, kind), v in broker.items() if kind == "control" and s != d)
    print(f"\n3 zones x 1 broker, routing on: {crossing / data:.3%} of client record bytes "
          f"crossed zones ({crossing:.0f} of {data:.0f}); broker to broker: "
          f"{broker_data:.0f} record bytes, {control / data:.3f} control bytes across "
          f"zones per client record byte")
    produced = 3 * PER_ZONE * SIZE
    proxied = total(routed, "tidelog_zone_produce_bytes_total") - proxied_before
    written = total(routed, "tidelog_wal_bytes_written_total") - wal_before
    print(f"  {proxied / produced:.0%} of the produced bytes went through a proxy; WAL bytes "
          f"written per byte produced: {written / produced:.2f} (the owner writes its own "
          f"copy of a proxied batch: written-once REF records come next)")
    assert proxied >= produced * 8 / 12 * 0.9
    assert data >= (1 + 3) * 3 * PER_ZONE * SIZE * 0.9  # each record produced once, read 3x
    assert crossing <= 0.005 * data
    assert broker_data == 0


def total(z: ZonedCluster, metric: str) -> float:
    return sum(status_scrape(b.metrics_url).value(metric) for b in z.cluster.brokers.values())


def test_idempotent_and_transactional_producers_through_a_proxy(routed: ZonedCluster) -> None:
    """Through zone b's broker: an idempotent producer's records once each; transactions,
    one aborted, read_committed sees exactly the committed ones."""
    topic = "routed-txn"
    create(routed.cluster.bootstrap, topic)
    boot = routed.bootstrap(routed.zb)
    produce_numbered(boot, topic, "i", 2000, **{"enable.idempotence": True})
    produce_transactions(boot, topic, b"t%d-%03d")
    c = TailingConsumer(boot, topic, isolation="read_committed")
    try:
        got = c.until(2240)
        assert c.more(1.0) == []
    finally:
        c.close()
    values = sorted(v[:8] if v.startswith(b"i-") else v for _p, _o, v in got)
    assert values == sorted([b"i-%06d" % i for i in range(2000)]
                            + [b"t0-%03d" % i for i in range(120)]
                            + [b"t2-%03d" % i for i in range(120)])
    by_part: dict[int, list[int]] = {}
    for part, offset, _v in got:
        by_part.setdefault(part, []).append(offset)
    for part, offsets in by_part.items():
        assert offsets == sorted(set(offsets)), part


def test_list_offsets_and_committed_offsets_through_a_proxy(routed: ZonedCluster) -> None:
    """What only the owner knows (watermarks, offsets by time) is asked of it."""
    topic = "routed-offsets"
    create(routed.cluster.bootstrap, topic)
    boot = routed.bootstrap(routed.za)
    produce_numbered(boot, topic, "o", 1200)
    c = Consumer({"bootstrap.servers": boot, "group.id": uuid.uuid4().hex})
    try:
        for part in range(12):
            assert c.get_watermark_offsets(TopicPartition(topic, part), timeout=10) == (0, 100)
        found = c.offsets_for_times([TopicPartition(topic, part, 0) for part in range(12)],
                                    timeout=10)
        assert [tp.offset for tp in found] == [0] * 12
    finally:
        c.close()


def test_delete_records_and_describe_producers_through_a_proxy(routed: ZonedCluster) -> None:
    """Admin requests a client sends a partition's leader reach the owner through zone
    a's broker: DeleteRecords (confluent-kafka) and DescribeProducers (kafka-python)."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KpTopicPartition

    topic = "routed-admin"
    create(routed.cluster.bootstrap, topic)
    boot = routed.bootstrap(routed.za)
    produce_numbered(boot, topic, "d", 1200, **{"enable.idempotence": True})
    elsewhere = [p for p in range(12)  # partitions zone a's broker does not own
                 if p not in owned_by(routed.cluster.bootstrap, topic, 1)]
    admin = AdminClient({"bootstrap.servers": boot})
    done = admin.delete_records([TopicPartition(topic, p, 40) for p in elsewhere])
    assert {tp.partition: f.result(30).low_watermark for tp, f in done.items()} == {
        p: 40 for p in elsewhere}
    c = Consumer({"bootstrap.servers": boot, "group.id": uuid.uuid4().hex})
    try:
        assert {c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                for p in elsewhere} == {40}
    finally:
        c.close()
    kp = KafkaAdminClient(bootstrap_servers=boot)
    try:
        states = kp.describe_producers([KpTopicPartition(topic, elsewhere[0])])
        [state] = states[KpTopicPartition(topic, elsewhere[0])].active_producers
        assert state.producer_id >= 0 and state.last_sequence == 99
    finally:
        kp.close()


def owned_by(bootstrap: str, topic: str, node: int) -> set[int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p.id for p in md.topics[topic].partitions.values() if p.leader == node}


# ---- failures: last in the module, each brings its victim back ----------------------

@pytest.mark.parametrize("victim", [1, 2], ids=["owner-in-zone-a", "proxy-in-zone-b"])
def test_nothing_acknowledged_is_lost_when_an_owner_or_a_proxy_is_killed(
        routed: ZonedCluster, victim: int) -> None:
    """Zone b's idempotent acks=all producer writes every partition through zone b's
    broker (8 of 12 owned elsewhere) while a broker is killed with SIGKILL: the owner of
    a third of them (zone a: they move to survivors by WAL takeover; the proxy forwards
    to the new owners), or the proxy itself (zone b has no broker left: the client is
    told the owners). Every acknowledged record is read back once, in order."""
    topic = f"routed-kill-{victim}"
    create(routed.cluster.bootstrap, topic)
    load = Load(routed.bootstrap(routed.zb), topic, **{"socket.timeout.ms": 5000})
    try:
        wait_for(lambda: len(load.acked) > 3000, timeout=60, what="load before the kill")
        killed = time.monotonic()
        routed.cluster.brokers[victim].kill()
        wait_for(lambda: {p for p, _n, t in load.acked if t > killed + 1} >= set(range(12)),
                 timeout=90, what="the load to resume on every partition")
        resumed = len(load.acked)
        wait_for(lambda: len(load.acked) > resumed + 2000, timeout=60, what="more load")
    finally:
        load.stop()
        routed.cluster.brokers[victim].start()
    verify(load, routed.cluster.bootstrap, topic)
    print(f"\nbroker {victim} killed under a zone b producer: {len(load.acked)} acknowledged "
          f"records, none lost")

