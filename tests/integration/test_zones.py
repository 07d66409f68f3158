"""The zone of a client connection, found with no client change where possible
(docs/design/0003-zones.md, slice 1), through real clients against a 3-broker cluster in
zones a, b, c on one machine: a listener per zone on its own loopback alias
(127.0.<zone>.<node>), a source-address zone (127.0.3.x, reached through link proxies
that connect from 127.0.3.200), and client.id tokens and client.rack on the plain
listener. Every client byte is counted by its zone; the cross-zone share printed here is
the Kafka-like figure zone routing (slice 2) will remove."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.cluster import Cluster
from tests.integration.link_proxy import LinkProxy, free_port
from tidelog.tools.cluster_status import cross_zone_by_topic
from tidelog.tools.local_postgres import LocalPostgres
from tidelog.tools.status import scrape as status_scrape

pytestmark = pytest.mark.timeout(180)
ZONES = ("a", "b", "c")
CIDR_SOURCE = "127.0.3.200"
N, SIZE = 2000, 500


@dataclass
class ZonedCluster:
    cluster: Cluster
    za: dict[int, tuple[str, int]]
    zb: dict[int, tuple[str, int]]
    zc: dict[int, tuple[str, int]]
    """Zone c's advertised addresses: the link proxies."""
    proxies: dict[int, LinkProxy]

    def bootstrap(self, listener: dict[int, tuple[str, int]]) -> str:
        return ",".join(f"{h}:{p}" for h, p in listener.values())

    def zone_bytes(self, traffic: str = "client") -> dict[tuple[str, str, str], float]:
        """(source zone, destination zone, kind) -> bytes of `traffic` (client or broker),
        summed over brokers."""
        out: dict[tuple[str, str, str], float] = {}
        for b in self.cluster.brokers.values():
            for labels, value in status_scrape(b.metrics_url).series(
                    "tidelog_zone_bytes_total", traffic=traffic):
                key = (labels["source_zone"], labels["destination_zone"], labels["kind"])
                out[key] = out.get(key, 0.0) + value
        return out

    def connections(self) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for b in self.cluster.brokers.values():
            for labels, value in status_scrape(b.metrics_url).series("tidelog_connections"):
                key = (labels["zone"], labels["how"])
                out[key] = out.get(key, 0.0) + value
        return out


@pytest.fixture(scope="module")
def zoned(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ZonedCluster]:
    dsn = postgres.create_database(f"z_{uuid.uuid4().hex[:10]}")
    c = Cluster(tmp_path_factory.mktemp("zones"), dsn, racks=ZONES)
    za, zb, zc, proxies = {}, {}, {}, {}
    try:
        for n, b in c.brokers.items():
            za[n] = (f"127.0.1.{n}", free_port(f"127.0.1.{n}"))
            zb[n] = (f"127.0.2.{n}", free_port(f"127.0.2.{n}"))
            zc_bind = ("127.0.0.1", free_port("127.0.0.1"))
            proxies[n] = LinkProxy((f"127.0.3.{n}", 0), zc_bind, source=CIDR_SOURCE)
            zc[n] = proxies[n].address
            b.settings.update({
                "listeners": f"PLAINTEXT://127.0.0.1:0,ZA://{za[n][0]}:{za[n][1]},"
                             f"ZB://{zb[n][0]}:{zb[n][1]},ZC://{zc_bind[0]}:{zc_bind[1]}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:0,ZA://{za[n][0]}:{za[n][1]},"
                                        f"ZB://{zb[n][0]}:{zb[n][1]},"
                                        f"ZC://{zc[n][0]}:{zc[n][1]}",
                "listener.zones": "ZA:a,ZB:b",
                "zone.cidr.blocks": "c@127.0.3.0/24",
            })
        yield ZonedCluster(c.start(), za, zb, zc, proxies)
    finally:
        c.stop()
        for proxy in proxies.values():
            proxy.stop()


def brokers_seen(bootstrap: str) -> dict[int, tuple[str, int]]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {n: (b.host, b.port) for n, b in md.brokers.items()}


def produce(bootstrap: str, topic: str, **conf: object) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", **conf})
    for i in range(N):
        p.produce(topic, value=b"%06d" % i + b"x" * (SIZE - 6), partition=i % 12)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0


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


def create(boot: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": boot})
    for f in admin.create_topics([NewTopic(topic, 12)], operation_timeout=20).values():
        f.result(30)


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
    and to zone b; without zone routing two thirds of them cross zones (the brokers of a
    and c own two thirds of the partitions), as with Kafka."""
    topic = "zoned-b"
    boot = zoned.bootstrap(zoned.zb)
    create(boot, topic)
    before = zoned.zone_bytes()
    produce(boot, topic)
    assert consume(boot, topic) == N
    after = zoned.zone_bytes()
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    produced = sum(v for (src, _d, kind), v in delta.items() if src == "b" and kind == "data")
    fetched = sum(v for (_s, dst, kind), v in delta.items() if dst == "b" and kind == "data")
    assert produced >= N * SIZE and fetched >= N * SIZE
    crossing = sum(v for (src, dst, kind), v in delta.items()
                   if kind == "data" and src != dst and "b" in (src, dst))
    total = sum(v for (src, dst, kind), v in delta.items() if kind == "data" and "b" in (src, dst))
    share = crossing / total
    print(f"\nzone b's clients, no zone routing: {share:.1%} of their record bytes cross "
          f"zones ({crossing:.0f} of {total:.0f})")
    assert 0.4 < share < 0.9  # 8 of 12 partitions live in other zones
    # per topic, as `tidelog cluster status` shows it
    crossed, total = cross_zone_by_topic(
        [status_scrape(b.metrics_url) for b in zoned.cluster.brokers.values()])[topic]
    assert total >= 2 * N * SIZE and abs(crossed / total - share) < 0.05
    p = Producer({"bootstrap.servers": boot})
    p.produce(topic, value=b"open")
    assert p.flush(30) == 0
    assert zoned.connections().get(("b", "listener"), 0) >= 1  # the producer's, open


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
