"""Zone routing over other shapes than one broker per zone: an unbalanced 2 + 1 (zone a
has two brokers, zone b one) and 3 zones x 2 brokers. A producer and a consumer group per
zone on a 12-partition topic, three times: as Kafka routes them (`zone.fetch.enable`
switched off at run time), with fetch in the zone (the default), and with
`zone.routing.enable` switched on at run time (both are dynamic broker configs); every
group reads every record once each time, and the share of client record bytes that
crossed zones is printed for each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.integration.cluster import wait_for
from tests.integration.zoned import (
    SIZE,
    ZonedCluster,
    create,
    every_zone_reads_everything,
    zoned_cluster,
)
from tidelog.tools.local_postgres import LocalPostgres

pytestmark = pytest.mark.timeout(300)
TOPOLOGIES = {"2+1": ("a", "a", "b"), "3x2": ("a", "b", "c", "a", "b", "c")}
PER_ZONE = 1200


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def topology(request: pytest.FixtureRequest, postgres: LocalPostgres,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ZonedCluster]]:
    name = request.param
    for z in zoned_cluster(postgres, tmp_path_factory, f"topo-{name.replace('+', 'p')}",
                           racks=TOPOLOGIES[name]):
        yield name, z


def bootstraps(z: ZonedCluster, zones: list[str]) -> dict[str, str]:
    by_zone = {"a": z.za, "b": z.zb, "c": z.zc}
    return {zone: z.bootstrap(by_zone[zone]) for zone in zones}


def one_round(z: ZonedCluster, topic: str, zones: list[str]) -> float:
    """Every zone produces and every zone's group reads everything; the share of client
    record bytes that crossed zones."""
    create(z.cluster.bootstrap, topic)
    boots = bootstraps(z, zones)
    before = z.zone_bytes()
    every_zone_reads_everything(boots, topic, PER_ZONE)
    want = len(zones) * PER_ZONE
    delta = {k: v - before.get(k, 0.0) for k, v in z.zone_bytes().items()}
    data = sum(v for (_s, _d, kind), v in delta.items() if kind == "data")
    assert data >= (1 + len(zones)) * want * SIZE * 0.9
    return sum(v for (s, d, kind), v in delta.items() if kind == "data" and s != d) / data


def routed_everywhere(z: ZonedCluster, zones: list[str], racks: tuple[str, ...]) -> bool:
    """A new client of each zone is told only that zone's brokers lead."""
    for zone, boot in bootstraps(z, zones).items():
        md = AdminClient({"bootstrap.servers": boot}).list_topics(timeout=10)
        mine = {n for n, r in enumerate(racks, 1) if r == zone}
        for t in md.topics.values():
            if not t.topic.startswith("__") and any(
                    p.leader not in mine for p in t.partitions.values()):
                return False
    return True


def test_zone_routing_switched_on_at_run_time(topology: tuple[str, ZonedCluster]) -> None:
    name, z = topology
    racks = TOPOLOGIES[name]
    zones = sorted(set(racks))
    admin = AdminClient({"bootstrap.servers": z.cluster.bootstrap})

    def set_everywhere(key: str, value: str) -> None:
        for node in z.cluster.brokers:  # each broker's dynamic config (librdkafka has no
            # incremental form for the cluster-wide default)
            res = ConfigResource("broker", str(node), incremental_configs=[ConfigEntry(
                key, value, incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([res])[res].result(30)

    set_everywhere("zone.fetch.enable", "false")
    kafka = one_round(z, f"topo-kafka-{len(racks)}", zones)
    set_everywhere("zone.fetch.enable", "true")
    fetch_only = one_round(z, f"topo-fetch-{len(racks)}", zones)
    set_everywhere("zone.routing.enable", "true")
    wait_for(lambda: routed_everywhere(z, zones, racks), timeout=30,
             what="every broker to route zoned clients")
    routed = one_round(z, f"topo-routed-{len(racks)}", zones)
    print(f"\n{name} brokers in zones {','.join(racks)}: client record bytes crossing "
          f"zones: {kafka:.1%} as Kafka routes them, {fetch_only:.1%} with fetch in the "
          f"zone (the default), {routed:.3%} with zone routing")
    assert kafka > fetch_only > routed
    assert routed <= 0.005
