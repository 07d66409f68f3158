"""A real cluster for integration tests: several `tidelog server` processes sharing one
PostgreSQL database, one WAL directory and one object store, as in production."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg

from tests.integration.broker import BrokerProcess


class Cluster:
    def __init__(self, root: Path, dsn: str, brokers: int = 3,
                 racks: tuple[str, ...] = ("a", "b", "c"),
                 settings: dict[str, str] | None = None) -> None:
        self.root = root
        self.dsn = dsn
        self.brokers: dict[int, BrokerProcess] = {}
        common = {
            "metadata.uri": dsn,
            "wal.uri": f"file://{root}/wal",  # a directory: one broker-<id>.wal each
            "objectstore.uri": f"file://{root}/objects",
            "upload.interval.ms": "500",
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "1000",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.num.partitions": "6",
            "group.initial.rebalance.delay.ms": "0",
            **(settings or {}),
        }
        for node in range(1, brokers + 1):
            self.brokers[node] = BrokerProcess(root / f"broker-{node}", {
                **common, "node.id": str(node), "broker.rack": racks[(node - 1) % len(racks)],
                "data.dir": str(root / f"broker-{node}")})

    def start(self) -> Cluster:
        for b in self.brokers.values():
            b.start()
        return self

    def stop(self) -> None:
        for b in self.brokers.values():
            b.stop()

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers.values())

    def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        """Run one statement on the cluster's metadata database (what a test does behind
        the brokers' backs)."""
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(run())


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `check` until true: the brokers are other processes, so there is no event to
    wait on from here."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def acknowledges(port: int, topic: str, partition: int) -> bool:
    """Whether the broker on `port` itself acknowledges one produce to the partition:
    straight to it, as no real client would once it learned of a new leader. A refused
    connection, a closed one or an error code is no acknowledgement."""
    import datetime

    from kio.schema.errors import ErrorCode
    from kio.schema.produce.v9 import request as produce_req

    from tests.integration.rawclient import RawClient
    from tidelog.protocol.records import build_batch

    try:
        raw = RawClient("127.0.0.1", port)
    except OSError:
        return False
    try:
        resp = raw.request(produce_req.ProduceRequest(
            transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
            topic_data=(produce_req.TopicProduceData(name=topic, partition_data=(
                produce_req.PartitionProduceData(
                    index=partition, records=build_batch([(b"k", b"probe")])),)),)))
    except (OSError, EOFError, ConnectionError):
        return False
    finally:
        raw.close()
    return bool(resp.responses[0].partition_responses[0].error_code == ErrorCode.none)
