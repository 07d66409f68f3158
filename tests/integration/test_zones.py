"""The zone of a client connection, found with no client change where possible
(docs/design/0003-zones.md, slice 1), through real clients against a 3-broker cluster in
zones a, b, c on one machine: a listener per zone on its own loopback alias
(127.0.<zone>.<node>), a source-address zone (127.0.3.x, reached through link proxies
that connect from 127.0.3.200), and client.id tokens and client.rack on the plain
listener. Every client byte is counted by its zone. Zone b's consumers fetch every
partition from zone b's broker (slice 3); produce is not routed yet (slice 2)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from tests.integration.load import Load
from tests.integration.zoned import (
    SIZE,
    N,
    TailingConsumer,
    ZonedCluster,
    check_once_in_order,
    create,
    produce,
    produce_transactions,
    zoned_cluster,
)
from tidelog.tools.cluster_status import cross_zone_by_topic
from tidelog.tools.local_postgres import LocalPostgres
from tidelog.tools.status import scrape as status_scrape

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def zoned(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ZonedCluster]:
    yield from zoned_cluster(postgres, tmp_path_factory, "zones")


def brokers_seen(bootstrap: str) -> dict[int, tuple[str, int]]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {n: (b.host, b.port) for n, b in md.brokers.items()}


def consume(bootstrap: str, topic: str, **conf: object) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", **conf})
    c.subscribe([topic])
    seen, deadline = 0, time.monotonic() + 60
    try:
        while seen < N and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                seen += 1
    finally:
        c.close()
    return seen


def test_each_listener_answers_with_its_own_addresses(zoned: ZonedCluster) -> None:
    """Metadata names every broker at its address for the listener the request came in
    on (Kafka's multi-listener rule), so a zone's clients stay on its listener."""
    assert brokers_seen(zoned.bootstrap(zoned.zb)) == zoned.zb
    assert brokers_seen(zoned.bootstrap(zoned.za)) == zoned.za
    assert brokers_seen(zoned.bootstrap(zoned.zc)) == zoned.zc
    plain = brokers_seen(zoned.cluster.bootstrap)
    assert plain == {n: ("127.0.0.1", b.port) for n, b in zoned.cluster.brokers.items()}


def test_a_zone_listeners_clients_are_counted_in_its_zone(zoned: ZonedCluster) -> None:
    """A producer and a consumer on zone b's listener: their record bytes are counted from
    and to zone b. Produce is not routed yet: two thirds of it crosses zones (the brokers
    of a and c own two thirds of the partitions), as with Kafka; the consumer fetches
    everything from zone b's broker (KIP-392), so none of what it reads does."""
    topic = "zoned-b"
    boot = zoned.bootstrap(zoned.zb)
    create(boot, topic)
    before = zoned.zone_bytes()
    produce(boot, topic)
    assert consume(boot, topic) == N
    after = zoned.zone_bytes()
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    data = {(src, dst): v for (src, dst, kind), v in delta.items() if kind == "data"}
    # zone b's broker answers every fetch: b -> b holds its produce and all the fetches
    assert data.get(("b", "b"), 0.0) >= N * SIZE * (4 + 12) / 12
    produced_out = sum(v for (src, dst), v in data.items() if src == "b" and dst != "b")
    fetched_in = sum(v for (src, dst), v in data.items() if dst == "b" and src != "b")
    share = produced_out / (2 * N * SIZE)
    print(f"\nzone b's clients, produce not routed, fetch routed: {share:.1%} of their "
          f"record bytes cross zones ({produced_out / (N * SIZE):.1%} of produced, "
          f"{fetched_in / (N * SIZE):.1%} of fetched)")
    assert 0.4 < produced_out / (N * SIZE) < 0.9  # 8 of 12 partitions live in other zones
    assert fetched_in == 0
    # per topic, as `tidelog cluster status` shows it
    crossed, total = cross_zone_by_topic(
        [status_scrape(b.metrics_url) for b in zoned.cluster.brokers.values()])[topic]
    assert total >= 2 * N * SIZE and abs(crossed / total - share) < 0.05, (crossed, total)
    p = Producer({"bootstrap.servers": boot})
    p.produce(topic, value=b"open")
    assert p.flush(30) == 0
    assert zoned.connections().get(("b", "listener"), 0) >= 1  # the producer's, open


def test_a_zone_fetches_other_zones_partitions_from_its_own_broker(
        zoned: ZonedCluster) -> None:
    """Zone b's consumers read all 12 partitions from zone b's broker: the owners (in a
    and c) name it as the preferred read replica, and it reads what they have not
    uploaded from their WALs on the shared volume, the rest from objects. Every record
    arrives once and in order; no record byte reaches zone b from another zone; the
    brokers exchange only control bytes. read_committed hides an aborted transaction
    through it as from the owner."""
    topic = "zoned-fetch"
    create(zoned.cluster.bootstrap, topic)
    boot = zoned.bootstrap(zoned.zb)
    before, reads_before = zoned.zone_bytes(), zoned.zone_fetch_reads()
    broker_before = zoned.zone_bytes("broker")
    tail = TailingConsumer(boot, topic)
    try:
        started = time.monotonic()
        produce(zoned.cluster.bootstrap, topic)  # the plain listener: no zone
        got = tail.until(N)
        print(f"\nzone b tails {N} records produced through the owners: all in "
              f"{time.monotonic() - started:.2f}s")
    finally:
        tail.close()
    check_once_in_order(got)
    after, reads = zoned.zone_bytes(), zoned.zone_fetch_reads()
    into_b = {k: v - before.get(k, 0.0) for k, v in after.items()
              if k[1] == "b" and k[2] == "data" and v > before.get(k, 0.0)}
    assert set(into_b) == {("b", "b", "data")}, into_b
    assert into_b[("b", "b", "data")] >= N * SIZE
    proxied = sum(reads.get(k, 0.0) - reads_before.get(k, 0.0) for k in reads)
    assert proxied >= N * SIZE * 8 / 12 * 0.9, reads  # 8 of 12 partitions owned elsewhere
    broker = {k: v - broker_before.get(k, 0.0) for k, v in zoned.zone_bytes("broker").items()
              if v > broker_before.get(k, 0.0)}
    assert not any(kind == "data" for _s, _d, kind in broker), broker
    assert any(src != dst for src, dst, _k in broker), broker  # the TailIndex long polls

    # later, from the start: what the owners uploaded meanwhile comes from objects
    zoned.wait_uploaded()
    objects_before = zoned.zone_fetch_reads().get("objects", 0.0)
    again = TailingConsumer(boot, topic)
    try:
        check_once_in_order(again.until(N))
    finally:
        again.close()
    assert zoned.zone_fetch_reads().get("objects", 0.0) - objects_before >= N * SIZE * 0.5


def test_read_committed_through_a_zone_broker(zoned: ZonedCluster) -> None:
    """Transactions over all 12 partitions, one of them aborted: a read_committed consumer
    of zone b sees exactly the committed records, 8 partitions' worth of them through
    zone b's broker."""
    topic = "zoned-fetch-txn"
    create(zoned.cluster.bootstrap, topic)
    produce_transactions(zoned.cluster.bootstrap, topic, b"%d-%03d")
    reads_before = sum(zoned.zone_fetch_reads().values())
    tail = TailingConsumer(zoned.bootstrap(zoned.zb), topic, isolation="read_committed")
    try:
        got = tail.until(240)
        assert tail.more(1.0) == []  # nothing of the aborted one follows
    finally:
        tail.close()
    values = sorted(v for _p, _o, v in got)
    assert values == sorted([b"0-%03d" % i for i in range(120)]
                            + [b"2-%03d" % i for i in range(120)])
    assert sum(zoned.zone_fetch_reads().values()) > reads_before


def test_client_id_tokens_and_client_rack_name_the_zone(zoned: ZonedCluster) -> None:
    """On the plain listener: `tidelog_az=` and the peers' spellings in client.id, and a
    consumer's client.rack (Fetch's rack_id)."""
    topic = "zoned-ids"
    boot = zoned.cluster.bootstrap
    create(boot, topic)
    before = zoned.zone_bytes()
    spellings = {"tidelog_az": "z-tidelog", "automq_az": "z-automq", "ws_az": "z-ws",
                 "diskless_az": "z-diskless"}
    for key, zone in spellings.items():
        produce(boot, topic, **{"client.id": f"orders,{key}={zone}"})
    assert consume(boot, topic, **{"client.rack": "z-rack"}) >= N
    after = zoned.zone_bytes()
    grew = {k for k, v in after.items() if v > before.get(k, 0.0)}
    for zone in spellings.values():
        assert any(src == zone and kind == "data" for src, _d, kind in grew), zone
    assert any(dst == "z-rack" and kind == "data" for _s, dst, kind in grew)


def test_a_source_address_names_the_zone(zoned: ZonedCluster) -> None:
    """Clients reaching the brokers from 127.0.3.x (link proxies connecting from
    127.0.3.200) are counted in zone c by `zone.cidr.blocks`; the proxies carried it."""
    topic = "zoned-c"
    boot = zoned.bootstrap(zoned.zc)
    create(boot, topic)
    before = zoned.zone_bytes()
    carried = sum(p.sent_up for p in zoned.proxies.values())
    p = Producer({"bootstrap.servers": boot, "linger.ms": 5})
    for i in range(N):
        p.produce(topic, value=b"x" * SIZE)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert zoned.connections().get(("c", "cidr"), 0) >= 1  # the producer's, still open
    del p
    after = zoned.zone_bytes()
    produced = sum(v - before.get(k, 0.0) for k, v in after.items()
                   if k[0] == "c" and k[2] == "data")
    assert produced >= N * SIZE
    assert sum(p.sent_up for p in zoned.proxies.values()) - carried >= N * SIZE


def test_broker_to_broker_requests_are_counted_as_broker_traffic(zoned: ZonedCluster) -> None:
    """A transaction over partitions of every broker: its coordinator sends the others
    WriteTxnMarkers, counted as broker traffic in the zones of both ends, control only."""
    topic = "zoned-txn"
    boot = zoned.cluster.bootstrap
    create(boot, topic)
    before = zoned.zone_bytes("broker")
    p = Producer({"bootstrap.servers": boot, "transactional.id": "zoned-txn"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(12):
        p.produce(topic, value=b"x", partition=i)
    p.commit_transaction(30)
    after = zoned.zone_bytes("broker")
    grew = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    assert any(src != dst and kind == "control" for src, dst, kind in grew), grew
    assert not any(kind == "data" for _s, _d, kind in grew), grew


# ---- failures: last in the module, each brings its victim back ----------------------

@pytest.mark.parametrize("victim", [1, 2], ids=["owner-in-zone-a", "zone-b-broker"])
def test_zone_reads_go_on_when_a_broker_is_killed(zoned: ZonedCluster, victim: int) -> None:
    """A zone b consumer tails a topic under an idempotent acks=all producer while a
    broker is killed with SIGKILL: the owner of a third of the partitions (zone a: its
    partitions move to survivors by WAL takeover, and zone b's broker reads them from
    their new owners), or zone b's own broker (zone b has no broker left: the consumer
    fetches from the owners). Every acknowledged record is read, each partition's in
    order and once."""
    topic = f"zoned-kill-{victim}"
    create(zoned.cluster.bootstrap, topic)
    load = Load(zoned.cluster.bootstrap, topic)
    tail = TailingConsumer(zoned.bootstrap(zoned.zb), topic)
    try:
        tail.until(1000)
        killed = time.monotonic()
        zoned.cluster.brokers[victim].kill()
        deadline = killed + 90
        while not {p for p, _n, t in load.acked if t > killed + 1} >= set(range(12)):
            assert time.monotonic() < deadline, "the load did not resume on every partition"
            tail.more(0.2)
        acked_after = len(load.acked)
        while len(load.acked) < acked_after + 1000:
            assert time.monotonic() < deadline
            tail.more(0.2)
        load.stop()
        assert not load.failed, load.failed[:5]
        acked = {n for _p, n, _t in load.acked}
        while not acked <= {int(v.split(b"-")[1]) for _p, _o, v in tail.records}:
            assert time.monotonic() < deadline, (
                f"{len(acked - {int(v.split(b'-')[1]) for _p, _o, v in tail.records})} "
                f"acknowledged records not read")
            tail.more(0.5)
        print(f"\nbroker {victim} killed: {len(acked)} acknowledged records, all read in "
              f"zone b")
    finally:
        load.stop()
        tail.close()
        zoned.cluster.brokers[victim].start()
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for partition, offset, value in tail.records:
        by_partition.setdefault(partition, []).append((offset, int(value.split(b"-")[1])))
    for partition, seq in by_partition.items():
        offsets = [o for o, _n in seq]
        assert offsets == sorted(set(offsets)), f"partition {partition}: read twice or out of order"
        numbers = [n for _o, n in seq]
        assert numbers == sorted(numbers), f"partition {partition}: records out of order"
