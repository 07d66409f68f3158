"""kill -9 durability: every acknowledged message survives SIGKILL at random moments, on
every kind of WAL (file, file with O_DIRECT, S3 WAL on moto)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import WAL_KINDS, WAL_OPENED, BrokerProcess, wal_settings

PARTITIONS = 3
KILLS = 6


@pytest.mark.parametrize("wal_kind", WAL_KINDS)
def test_acknowledged_messages_survive_sigkill(
    tmp_path: Path, request: pytest.FixtureRequest, wal_kind: str
) -> None:
    broker = BrokerProcess(tmp_path / "b", {
        # small uploads so kills land before, during and after uploads and WAL trims
        "upload.bytes": str(128 << 10), "upload.interval.ms": "300",
        "wal.capacity": str(8 << 20),
        **wal_settings(wal_kind, request, tmp_path),
    }).start()
    # the WAL in use says so when it opens
    assert WAL_OPENED[wal_kind] in broker.log()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("chaos", PARTITIONS, 1)])["chaos"].result(30)

        acked: list[tuple[int, int, bytes]] = []  # (partition, offset, value)
        lock = threading.Lock()
        stop = threading.Event()

        def on_delivery(err: object, msg: object) -> None:
            if err is None:
                with lock:
                    acked.append((msg.partition(), msg.offset(), msg.value()))  # type: ignore[attr-defined]

        def produce() -> None:
            p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                          "linger.ms": 2, "message.timeout.ms": 60000,
                          "reconnect.backoff.ms": 20, "reconnect.backoff.max.ms": 200,
                          "retry.backoff.ms": 20})
            i = 0
            while not stop.is_set():
                try:
                    p.produce("chaos", value=f"m{i:08d}".encode() + b"x" * 200,
                              partition=i % PARTITIONS, on_delivery=on_delivery)
                    i += 1
                except BufferError:
                    p.poll(0.05)
                p.poll(0)
                if i % 50 == 0:
                    time.sleep(0.002)
            p.flush(90)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        rng = random.Random(1234)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.4, 1.5))
            broker.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            broker.start()
        time.sleep(1.0)
        stop.set()
        t.join(120)
        assert not t.is_alive()
        print(f"{len(acked)} acknowledged across {KILLS} kills")
        assert len(acked) > 1000, f"too few acknowledgements to mean anything: {len(acked)}"

        # one more crash after the producer is done, then read everything back
        broker.kill()
        broker.start()
        stored: dict[int, dict[int, bytes]] = {p: {} for p in range(PARTITIONS)}
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                      "enable.auto.commit": False})
        c.assign([TopicPartition("chaos", p, 0) for p in range(PARTITIONS)])
        highs = {p: c.get_watermark_offsets(TopicPartition("chaos", p), 10)[1]
                 for p in range(PARTITIONS)}
        deadline = time.monotonic() + 60
        while sum(len(v) for v in stored.values()) < sum(highs.values()):
            assert time.monotonic() < deadline, "could not read back everything"
            for m in c.consume(1000, 1.0):
                assert m.error() is None, m.error()
                stored[m.partition()][m.offset()] = m.value()
        c.close()
        for p in range(PARTITIONS):  # offsets dense from 0
            assert sorted(stored[p]) == list(range(highs[p]))
        lost = [(p, o) for p, o, v in acked if stored[p].get(o) != v]
        assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    finally:
        broker.stop()
