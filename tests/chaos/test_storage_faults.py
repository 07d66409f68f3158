"""Storage faults under load, on a cluster of three brokers whose objects are in S3
(moto, behind one fault proxy per broker) and whose metadata is in PostgreSQL (behind a
proxy that can stall every connection): a 503 SlowDown storm, multi-second S3 latency,
a broker killed between an object PUT and its metadata commit, PostgreSQL unreachable for
10 s. Under each, an acks=all producer of numbered records runs; afterwards every
acknowledged record is read back once, in order, and no object is left in the bucket that
metadata does not name once the garbage grace has passed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import boto3
import pytest

from tests.integration.cluster import Cluster, wait_for
from tests.integration.fault_proxies import S3FaultProxy, TcpStallProxy
from tests.integration.load import Load
from tests.integration.test_failover import (
    controller,
    create,
    kill_under_load,
    verify,
    wal_owner,
)
from tidelog.metadata.uri import open_metadata
from tidelog.stream.objects import GARBAGE, OBJECTS
from tidelog.tools.local_postgres import LocalPostgres

pytestmark = pytest.mark.timeout(600)

GRACE_MS = 3000
AUDIT_MS = 2000
"""`log.segment.delete.delay.ms` of the cluster: garbage older than this is deleted."""


class FaultyCluster(Cluster):
    def __init__(self, postgres: LocalPostgres, s3: dict[str, Any], root: Any) -> None:
        dsn = postgres.create_database(f"faults_{uuid.uuid4().hex[:10]}")
        self.pg = TcpStallProxy(urlsplit(dsn).port or 5432)
        parts = urlsplit(dsn)
        proxied = urlunsplit(parts._replace(
            netloc=parts.netloc.rsplit(":", 1)[0] + f":{self.pg.port}"))
        self.prefix = f"faults-{uuid.uuid4().hex[:8]}"
        self.s3 = s3
        super().__init__(root, proxied, settings={
            "log.segment.delete.delay.ms": str(GRACE_MS),
            "object.orphan.audit.interval.ms": str(AUDIT_MS),
            "object.compaction.interval.ms": "4000",
        })
        self.proxies: dict[int, S3FaultProxy] = {}
        for node, b in self.brokers.items():
            proxy = self.proxies[node] = S3FaultProxy(s3["endpoint"]).start()
            query = urlencode({**s3["options"], "endpoint": proxy.endpoint})
            b.settings["objectstore.uri"] = f"s3://{s3['bucket']}/{self.prefix}?{query}"

    def stop(self) -> None:
        super().stop()
        for proxy in self.proxies.values():
            proxy.stop()
        self.pg.stop()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()
        self.pg.flow()

    def bucket_keys(self) -> set[str]:
        client = boto3.client("s3", endpoint_url=self.s3["endpoint"],
                              region_name=self.s3["region"],
                              aws_access_key_id=self.s3["access_key_id"],
                              aws_secret_access_key=self.s3["secret_access_key"])
        keys: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.s3["bucket"], Prefix=self.prefix + "/"):
            keys |= {o["Key"][len(self.prefix) + 1:] for o in page.get("Contents", ())}
        return keys

    def records(self) -> tuple[set[str], set[str]]:
        """The object keys metadata names live, and those it names as garbage (read
        straight from PostgreSQL, not through the proxy)."""
        async def get() -> tuple[set[str], set[str]]:
            store = open_metadata(self.direct_dsn)
            try:
                live = {json.loads(e.value)["key"] for e in await store.list_all(OBJECTS)}
                garbage = {json.loads(e.value)["key"] for e in await store.list_all(GARBAGE)}
                return live, garbage
            finally:
                await store.close()

        return asyncio.run(get())

    @property
    def direct_dsn(self) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(
            netloc=parts.netloc.rsplit(":", 1)[0] + f":{self.pg.upstream_port}"))

    def orphans(self) -> set[str]:
        """Objects in the bucket that no record names: listed before the records, as the
        brokers' own audit does (a record is written before its object)."""
        keys = self.bucket_keys()
        live, garbage = self.records()
        return keys - live - garbage

    def metric(self, name: str) -> float:
        total = 0.0
        for b in self.brokers.values():
            if b.proc is None or b.proc.poll() is not None:
                continue
            with urllib.request.urlopen(b.metrics_url, timeout=10) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith((name + " ", name + "{")):
                        total += float(line.split()[1])
        return total


@pytest.fixture(scope="module")
def cluster(postgres: LocalPostgres, moto_s3: dict[str, Any],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyCluster]:
    c = FaultyCluster(postgres, moto_s3, tmp_path_factory.mktemp("storage-faults"))
    try:
        yield c.start()  # type: ignore[misc]
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def healed(cluster: FaultyCluster) -> Iterator[None]:
    yield
    cluster.heal()


def under_load(cluster: FaultyCluster, topic: str, fault: Callable[[Load], None]) -> Load:
    """Run `fault` while the load runs, heal, let more load through, verify every
    acknowledged record; returns the load (its acknowledgements) for more checks."""
    boot = cluster.bootstrap
    create(boot, topic)
    load = Load(boot, topic)
    try:
        wait_for(lambda: len(load.acked) > 2000, timeout=60, what="load before the fault")
        fault(load)
        cluster.heal()
        seen = len(load.acked)
        wait_for(lambda: len(load.acked) > seen + 2000, timeout=90, what="load after it")
    finally:
        load.stop()
    verify(load, boot, topic)
    return load


def no_orphans_after_the_grace(cluster: FaultyCluster) -> None:
    """Garbage older than the grace is deleted and nothing in the bucket is left unnamed.
    An object whose PUT landed after a collector gave up on its intent (a PUT slower than
    the grace: the +3 s latency run with its 3 s grace) is the orphan audit's to delete,
    once it is older than the grace, at the audit's next round."""
    first = cluster.bucket_keys()
    time.sleep(GRACE_MS / 1000 + 2)  # the grace itself: garbage may not go sooner
    wait_for(lambda: not (cluster.records()[1] & first), timeout=30,
             what="garbage past its grace deleted")
    wait_for(lambda: cluster.orphans() == set(),
             timeout=(GRACE_MS + 2 * AUDIT_MS) / 1000 + 10,
             what="objects no record names deleted by the audit")


def acks_during(load: Load, seconds: float) -> int:
    start = len(load.acked)
    time.sleep(seconds)  # the fault's length
    return len(load.acked) - start


def test_a_slow_down_storm_is_ridden_out_from_the_wal(cluster: FaultyCluster) -> None:
    """Every PUT and most reads answered 503 SlowDown for 8 s: uploads back off and retry,
    produce goes on acknowledging from the WAL, nothing is lost."""
    during: list[int] = []

    def storm(load: Load) -> None:
        for proxy in cluster.proxies.values():
            proxy.fail_rate = 1.0
        during.append(acks_during(load, 8))

    under_load(cluster, "storm", storm)
    assert sum(p.failed for p in cluster.proxies.values()) > 10
    assert during[0] > 1000, "produce stalled during the storm"
    assert cluster.metric("tidelog_objectstore_errors_total") > 0  # retries ran out
    no_orphans_after_the_grace(cluster)
    print(f"\nSlowDown storm: {sum(p.failed for p in cluster.proxies.values())} requests "
          f"answered 503, {during[0]} records acknowledged during it")


def test_seconds_of_s3_latency_do_not_stall_produce(cluster: FaultyCluster) -> None:
    """Every S3 request takes 3 s longer for 8 s: produce keeps acknowledging at WAL
    latency, uploads catch up afterwards."""
    during: list[int] = []

    def slow(load: Load) -> None:
        for proxy in cluster.proxies.values():
            proxy.latency = 3.0
        during.append(acks_during(load, 8))

    under_load(cluster, "latency", slow)
    assert during[0] > 1000, "produce stalled while S3 was slow"
    no_orphans_after_the_grace(cluster)
    print(f"\nS3 latency +3 s: {during[0]} records acknowledged during it")


def test_a_broker_killed_between_an_object_put_and_its_commit_leaves_no_orphan(
        cluster: FaultyCluster) -> None:
    """The victim's object PUT lands in S3 and the broker is killed before it hears back,
    so it never commits the object. Its WAL is taken over (nothing lost) and the object,
    named only by its intent, is deleted after the grace."""
    victim = next(n for n in cluster.brokers if n != controller(cluster.bootstrap))
    landed: list[str] = []
    fired = threading.Event()
    b = cluster.brokers[victim]
    assert b.proc is not None
    pid = b.proc.pid

    def kill_once(path: str) -> None:
        if path.endswith(".obj") and not fired.is_set():
            fired.set()
            landed.append(path.split(f"/{cluster.prefix}/", 1)[1])
            os.kill(pid, signal.SIGKILL)

    def put_then_die() -> None:
        cluster.proxies[victim].after_put = kill_once
        assert fired.wait(30), "the victim uploaded nothing"

    audited = cluster.metric("tidelog_orphan_objects_deleted_total")
    kill_under_load(cluster, "put-then-kill", victim, fail=put_then_die)
    assert b.proc is not None and b.proc.wait(10) == -signal.SIGKILL
    b.proc = None
    b.start()
    live, garbage = cluster.records()
    assert landed[0] not in live, "the killed broker's object was committed"
    wait_for(lambda: landed[0] not in cluster.bucket_keys(), timeout=30,
             what="the uncommitted object deleted after the grace")
    assert cluster.orphans() == set()
    # the intent did it, not the audit (the victim restarted: the counters of the others)
    assert cluster.metric("tidelog_orphan_objects_deleted_total") <= audited
    print(f"\nbroker {victim} killed after its PUT of {landed[0]}: the object was "
          "deleted as garbage, nothing acknowledged lost")


def test_a_taker_killed_during_the_takeover_is_replaced_and_the_wal_replayed_once(
        cluster: FaultyCluster) -> None:
    """kill -9 a broker; its taker is killed too while its takeover's PUT is in flight (S3
    made 4 s slow). The controller gives both WALs to the broker left; the first WAL is
    replayed once (no acknowledged record twice or missing), both end taken over."""
    boot = cluster.bootstrap
    topic = "taker-killed"
    create(boot, topic)
    boss = controller(boot)
    victim = next(n for n in sorted(cluster.brokers) if n != boss)
    marks = {n: len(b.log()) for n, b in cluster.brokers.items()}  # this test's log lines
    load = Load(boot, topic)
    try:
        wait_for(lambda: len(load.acked) > 2000, timeout=60, what="load before the kill")
        for proxy in cluster.proxies.values():
            proxy.latency = 4.0
        cluster.brokers[victim].kill()
        wait_for(lambda: wal_owner(cluster, victim).pending, timeout=30, what="a taker assigned")
        taker = wal_owner(cluster, victim).taker
        assert taker is not None
        tb = cluster.brokers[taker]
        line = f"taking over broker {victim}'s WAL"
        wait_for(lambda: line in tb.log()[marks[taker]:], timeout=30,
                 what="the takeover to start")
        proxy = cluster.proxies[taker]
        wait_for(lambda: proxy.puts_started > proxy.puts_answered, timeout=30,
                 what="a PUT of the taker in flight")
        assert wal_owner(cluster, victim).pending, "the takeover ended before the kill"
        tb.kill()
        cluster.heal()
        last = next(n for n in cluster.brokers if n not in (victim, taker))
        wait_for(lambda: all(wal_owner(cluster, n).done for n in (victim, taker)), timeout=60,
                 what="both WALs taken over")
        assert wal_owner(cluster, victim).taker == last and wal_owner(cluster, taker).taker == last
        seen = len(load.acked)
        wait_for(lambda: len(load.acked) > seen + 2000, timeout=90, what="load after")
        for node in (victim, taker):
            cluster.brokers[node].start()
    finally:
        load.stop()
    verify(load, boot, topic)
    done = f"took over broker {victim}'s WAL in"
    assert cluster.brokers[last].log()[marks[last]:].count(done) == 1
    assert done not in tb.log()[marks[taker]:]
    print(f"\nbroker {victim} killed, its taker {taker} killed during the takeover: "
          f"broker {last} took over both WALs, nothing acknowledged lost or read twice")


def test_postgres_unreachable_for_10s_loses_nothing(cluster: FaultyCluster) -> None:
    """Every connection to PostgreSQL stalls for 10 s (longer than the 6 s lease): brokers
    stop acknowledging once their lease may have expired, exit when they learn it did,
    and are restarted (as a supervisor would); produce resumes and nothing acknowledged
    is lost."""
    restarts: list[int] = []
    stop = threading.Event()

    def supervise() -> None:
        while not stop.is_set():
            for node, b in cluster.brokers.items():
                if b.proc is not None and b.proc.poll() is not None:
                    b.proc = None
                    restarts.append(node)
                if b.proc is None and not stop.is_set():
                    try:
                        b.start(timeout=60)
                    except RuntimeError:
                        b.proc = None  # exited early (metadata still away): again
            stop.wait(0.5)

    def outage(load: Load) -> None:
        cluster.pg.stall()
        time.sleep(10)  # the outage's length
        cluster.pg.flow()

    supervisor = threading.Thread(target=supervise)
    supervisor.start()
    try:
        under_load(cluster, "pg-outage", outage)
        wait_for(lambda: all(b.proc is not None and b.proc.poll() is None
                             for b in cluster.brokers.values()), timeout=90,
                 what="every broker back")
    finally:
        stop.set()
        supervisor.join(120)
    no_orphans_after_the_grace(cluster)
    print(f"\nPostgreSQL stalled 10 s: brokers restarted {sorted(restarts)}")
