"""A cluster with a zone per rack on one machine, for the zone tests: a listener per zone on
its own loopback alias (127.0.<zone>.<node>), zone c's clients reaching the brokers
through link proxies that connect from 127.0.3.200 (zoned by `zone.cidr.blocks`)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.cluster import Cluster
from tests.integration.link_proxy import LinkProxy, free_port
from tidelog.tools.local_postgres import LocalPostgres
from tidelog.tools.status import scrape as status_scrape

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

    def zone_fetch_reads(self) -> dict[str, float]:
        """Record bytes brokers read for their zone's clients from other zones'
        partitions, by source (wal, objects), summed over brokers."""
        out: dict[str, float] = {}
        for b in self.cluster.brokers.values():
            for labels, value in status_scrape(b.metrics_url).series(
                    "tidelog_zone_fetch_reads_total"):
                out[labels["source"]] = out.get(labels["source"], 0.0) + value
        return out

    def wait_uploaded(self, timeout: float = 30.0) -> None:
        """Until no broker's log cache holds anything (all of it is in objects)."""
        deadline = time.monotonic() + timeout
        while any(status_scrape(b.metrics_url).value("tidelog_log_cache_bytes") > 0
                  for b in self.cluster.brokers.values()):
            assert time.monotonic() < deadline, "the log caches did not drain"
            time.sleep(0.2)

    def connections(self) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        for b in self.cluster.brokers.values():
            for labels, value in status_scrape(b.metrics_url).series("tidelog_connections"):
                key = (labels["zone"], labels["how"])
                out[key] = out.get(key, 0.0) + value
        return out


def zoned_cluster(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory,
                  name: str, racks: tuple[str, ...] = ZONES,
                  settings: dict[str, str] | None = None) -> Iterator[ZonedCluster]:
    """Brokers in `racks` (one each), each with a listener per zone (ZA, ZB on 127.0.1.n
    and 127.0.2.n; ZC through a link proxy from 127.0.3.200, zoned by source address)."""
    dsn = postgres.create_database(f"z_{uuid.uuid4().hex[:10]}")
    c = Cluster(tmp_path_factory.mktemp(name), dsn, brokers=len(racks), racks=racks,
                settings=settings)
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


def produce(bootstrap: str, topic: str, **conf: object) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", **conf})
    for i in range(N):
        p.produce(topic, value=b"%06d" % i + b"x" * (SIZE - 6), partition=i % 12)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def create(boot: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": boot})
    for f in admin.create_topics([NewTopic(topic, 12)], operation_timeout=20).values():
        f.result(30)


class TailingConsumer:
    """A zoned consumer group member reading from the start, its records kept."""

    def __init__(self, bootstrap: str, topic: str, isolation: str = "read_uncommitted"
                 ) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                                  "auto.offset.reset": "earliest",
                                  "isolation.level": isolation})
        self.consumer.subscribe([topic])
        self.records: list[tuple[int, int, bytes]] = []

    def until(self, count: int, timeout: float = 60.0) -> list[tuple[int, int, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            self.more(0.5)
        assert len(self.records) >= count, f"{len(self.records)} of {count} records"
        return self.records

    def more(self, wait: float) -> list[tuple[int, int, bytes]]:
        new = []
        for m in self.consumer.consume(500, wait):
            if m.error() is None:
                new.append((m.partition(), m.offset(), m.value()))
        self.records += new
        return new

    def close(self) -> None:
        self.consumer.close()


def check_once_in_order(got: list[tuple[int, int, bytes]]) -> None:
    """`produce`'s records, each once, every partition's in order and gapless."""
    assert sorted(int(v[:6]) for _p, _o, v in got) == list(range(N))
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for partition, offset, value in got:
        by_partition.setdefault(partition, []).append((offset, int(value[:6])))
    for partition, seq in by_partition.items():
        assert [o for o, _v in seq] == list(range(len(seq))), partition
        assert [v for _o, v in seq] == sorted(v for _o, v in seq), partition


def produce_numbered(bootstrap: str, topic: str, zone: str, n: int, **conf: object) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", **conf})
    for i in range(n):
        p.produce(topic, value=f"{zone}-{i:06d}-".encode() + b"x" * (SIZE - 10),
                  partition=i % 12)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def every_zone_reads_everything(boots: dict[str, str], topic: str, per_zone: int) -> None:
    """A producer (idempotent) and a consumer group per zone (`boots`: zone -> its
    bootstrap): every group reads every zone's records, each once."""
    tails = {zone: TailingConsumer(b, topic) for zone, b in boots.items()}
    producers = [threading.Thread(target=produce_numbered, args=(b, topic, zone, per_zone),
                                  kwargs={"enable.idempotence": True})
                 for zone, b in boots.items()]
    want = len(boots) * per_zone
    try:
        for t in producers:
            t.start()
        deadline = time.monotonic() + 120
        while any(len(c.records) < want for c in tails.values()):
            assert time.monotonic() < deadline, {k: len(c.records) for k, c in tails.items()}
            for c in tails.values():
                c.more(0.1)
        for t in producers:
            t.join()
    finally:
        for c in tails.values():
            c.close()
    expected = sorted(f"{zone}-{i:06d}" for zone in boots for i in range(per_zone))
    for zone, c in tails.items():
        assert sorted(v[:8].decode() for _p, _o, v in c.records) == expected, zone


def produce_transactions(bootstrap: str, topic: str, value: bytes, **conf: object) -> None:
    """Three transactions of 120 records over 12 partitions, the second aborted; record
    i of transaction t is `value % (t, i)`."""
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex,
                  **conf})
    p.init_transactions(30)
    for t, outcome in enumerate(("commit", "abort", "commit")):
        p.begin_transaction()
        for i in range(120):
            p.produce(topic, value=value % (t, i), partition=i % 12)
        p.flush(30)
        (p.commit_transaction if outcome == "commit" else p.abort_transaction)(30)
