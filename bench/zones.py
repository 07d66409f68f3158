"""Zones on one machine: what clients of zone b pay to write and read partitions owned in
zone a, three ways: across the zone link as Kafka routes them (`zone.fetch.enable=false`),
fetching from zone b's own broker (the default: it asks the owner where the records are
and reads them from the shared WAL volume), and with zone routing (`zone.routing.enable`:
produce too goes through zone b's broker, which writes the batch into its WAL and tells
the owner where it is) (docs/design/0003-zones.md).

Two brokers over one PostgreSQL, WAL directory and object store: broker 1 in zone a (it
owns the partitions measured), broker 2 in zone b. Every byte between the zones, client
to broker and broker to broker, goes through a userspace link proxy that delays it by
`--delay-ms` each way (default 1 ms) and counts it; nothing leaves 127.0.0.0/8.
A producer in zone b sends one record every few milliseconds (acks=all, one at a time);
a consumer in zone b tails them. Printed, for each mode: produce latency and end-to-end
latency (produce call to consume) P50 and P99, bytes over the zone link per record byte,
and WAL bytes written per record byte produced.

Prints figures; asserts nothing. Run: `.venv/bin/python bench/zones.py [--records N]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.broker import BrokerProcess  # noqa: E402
from tests.integration.link_proxy import LinkProxy, free_port  # noqa: E402

from tidelog.tools.local_postgres import start as start_postgres  # noqa: E402
from tidelog.tools.local_postgres import stop as stop_postgres  # noqa: E402
from tidelog.tools.status import scrape as status_scrape  # noqa: E402

SIZE = 1024


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


class Zones:
    """Brokers 1 (zone a) and 2 (zone b); each has a listener per zone and an internal
    one (what the other broker connects to). A listener of the other zone, and the
    internal one, are advertised at a delaying link proxy."""

    def __init__(self, root: Path, dsn: str, delay: float) -> None:
        self.links: list[LinkProxy] = []
        self.brokers: dict[int, BrokerProcess] = {}
        self.zone_listener: dict[str, dict[int, tuple[str, int]]] = {"a": {}, "b": {}}
        for node, zone in ((1, "a"), (2, "b")):
            binds, adverts = [], []
            for name, z in (("INTERNAL", None), ("ZA", "a"), ("ZB", "b")):
                host = {"INTERNAL": "127.0.0.1", "ZA": f"127.0.1.{node}",
                        "ZB": f"127.0.2.{node}"}[name]
                port = free_port(host)
                binds.append(f"{name}://{host}:{port}")
                advertised = (host, port)
                if z != zone:  # another zone's clients, or the other broker: over the link
                    link = LinkProxy((host if z else "127.0.0.1", 0), (host, port),
                                     delay=delay)
                    self.links.append(link)
                    advertised = link.address
                adverts.append(f"{name}://{advertised[0]}:{advertised[1]}")
                if z is not None:
                    self.zone_listener[z][node] = advertised
            self.brokers[node] = BrokerProcess(root / f"broker-{node}", {
                "node.id": str(node), "broker.rack": zone, "metadata.uri": dsn,
                "wal.uri": f"file://{root}/wal", "objectstore.uri": f"file://{root}/objects",
                "data.dir": str(root / f"broker-{node}"),
                "listeners": ",".join(binds), "advertised.listeners": ",".join(adverts),
                "listener.zones": "ZA:a,ZB:b", "log.level": "WARNING",
                "group.initial.rebalance.delay.ms": "0",
                "offsets.topic.num.partitions": "2",
                "transaction.state.log.num.partitions": "2",
                "auto.leader.rebalance.enable": "false",
            })

    def bootstrap(self, zone: str) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.zone_listener[zone].values())

    def start(self, settings: dict[str, str]) -> Zones:
        for b in self.brokers.values():
            b.settings.update(settings)
            b.start(timeout=60)
        return self

    def wal_bytes(self) -> float:
        return sum(status_scrape(b.metrics_url).value("tidelog_wal_bytes_written_total")
                   for b in self.brokers.values())

    def carried(self) -> int:
        return sum(link.sent_up + link.sent_down for link in self.links)

    def stop(self) -> None:
        for b in self.brokers.values():
            b.stop()
        for link in self.links:
            link.stop()


def owned_by(bootstrap: str, topic: str, node: int) -> list[int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return sorted(p.id for p in md.topics[topic].partitions.values() if p.leader == node)


def run(zones: Zones, topic: str, partitions: list[int], n: int, interval: float
        ) -> tuple[list[float], list[float], int, float]:
    """(end-to-end ms, produce ms, bytes over the zone link, WAL bytes written) for `n`
    records produced and consumed in zone b."""
    sent: dict[bytes, float] = {}
    e2e: list[float] = []
    got = threading.Event()
    c = Consumer({"bootstrap.servers": zones.bootstrap("b"), "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "latest", "fetch.wait.max.ms": 500,
                  "enable.auto.commit": False})
    c.subscribe([topic])
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                at = sent.get(m.value()[:16])
                if at is not None:
                    e2e.append((time.perf_counter() - at) * 1000)
                    if len(e2e) >= n:
                        got.set()

    p = Producer({"bootstrap.servers": zones.bootstrap("b"), "acks": "all", "linger.ms": 0})
    # wait until the consumer is assigned and positioned, then warm up the path
    while not c.assignment():
        c.poll(0.1)
    reader = threading.Thread(target=consume)
    reader.start()
    produce_ms: list[float] = []
    carried_before = carried = 0
    wal_before = wal = 0.0
    try:
        for i in range(200 + n):
            if i == 200:
                time.sleep(1.0)  # the warm-up's records are in; the measured ones follow
                e2e.clear()
            key = b"%016d" % i
            done = threading.Event()
            t = time.perf_counter()
            sent[key] = t
            p.produce(topic, key + b"x" * (SIZE - 16), partition=partitions[i % len(partitions)],
                      on_delivery=lambda err, msg, done=done: done.set())
            while not done.is_set():
                p.poll(0.001)
            if i >= 200:
                produce_ms.append((time.perf_counter() - t) * 1000)
            if i == 200:
                carried_before, wal_before = zones.carried(), zones.wal_bytes()
            time.sleep(interval)
        got.wait(60)
        carried = zones.carried() - carried_before
        wal = zones.wal_bytes() - wal_before
    finally:
        stop.set()
        reader.join()
        c.close()
    return e2e[:n], produce_ms, carried, wal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--delay-ms", type=float, default=1.0)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tidelog-zones-bench-"))
    pg_dir = root / "postgres"
    try:
        pg = start_postgres(pg_dir)
        print(f"2 zones, a link delay of {args.delay_ms} ms each way; {args.records} "
              f"records of {SIZE} B to partitions broker 1 (zone a) owns, produced and "
              f"consumed in zone b, one every {args.interval_ms} ms")
        modes = {
            "across zones (Kafka)": {"zone.fetch.enable": "false"},
            "fetch in the zone": {"zone.fetch.enable": "true"},
            "zone routing": {"zone.routing.enable": "true"},
        }
        rows = []
        for i, (what, settings) in enumerate(modes.items()):  # a cluster each
            zones = Zones(root / f"mode-{i}", pg.create_database(f"zones_{i}"),
                          args.delay_ms / 1000).start(settings)
            try:
                admin = AdminClient({"bootstrap.servers": zones.bootstrap("a")})
                admin.create_topics([NewTopic("zoned", 6)])["zoned"].result(30)
                partitions = owned_by(zones.bootstrap("a"), "zoned", 1)
                rows.append((what, *run(zones, "zoned", partitions, args.records,
                                        args.interval_ms / 1000)))
            finally:
                zones.stop()
        for what, e2e, prod, carried, wal in rows:
            n = max(len(e2e), 1) * SIZE
            print(f"  {what:22s} produce P50 {pct(prod, 50):5.2f} ms P99 {pct(prod, 99):5.2f} ms"
                  f"   end-to-end P50 {pct(e2e, 50):5.2f} ms P99 {pct(e2e, 99):5.2f} ms"
                  f"   zone link bytes/record byte {carried / n:.3f}"
                  f"   WAL bytes/record byte {wal / n:.2f}")
        base = rows[0]
        for what, e2e, prod, _c, _w in rows[1:]:
            print(f"  {what} / across zones: produce P50 {pct(prod, 50) / pct(base[2], 50):.2f}x"
                  f", end-to-end P50 {pct(e2e, 50) / pct(base[1], 50):.2f}x, "
                  f"P99 {pct(e2e, 99) / pct(base[1], 99):.2f}x")
    finally:
        stop_postgres(pg_dir)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
