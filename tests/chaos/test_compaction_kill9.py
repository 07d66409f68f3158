"""kill -9 while objects are merged, logs are compacted and garbage is deleted: nothing
acknowledged is lost, and metadata never references an object that is gone."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess

KILLS = 6
KEYS = 200


def referenced_keys(data_dir: Path) -> list[str]:
    """Object keys the metadata references (read straight from the embedded store)."""
    db = sqlite3.connect(data_dir / "metadata.db")
    try:
        rows = db.execute("select value from kv where key like '/objects/%'").fetchall()
    finally:
        db.close()  # the broker takes the database exclusively
    return [json.loads(bytes(v))["key"] for (v,) in rows]


def test_kill9_during_object_and_log_compaction(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "b", {
        "upload.bytes": str(32 << 10), "upload.interval.ms": "100",
        "object.compaction.interval.ms": "150", "object.compaction.min.objects": "2",
        "log.cleaner.backoff.ms": "150", "log.segment.delete.delay.ms": "0",
        "wal.capacity": str(8 << 20),
    }).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for f in [admin.create_topics([NewTopic("log", 1, 1)])["log"],
                  admin.create_topics([NewTopic("table", 1, 1, config={
                      "cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"})])[
                      "table"]]:
            f.result(30)
        acked_log: dict[int, bytes] = {}
        acked_table: dict[bytes, tuple[int, bytes]] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def on_delivery(err: object, msg: object) -> None:
            if err is not None:
                return
            with lock:
                m = msg  # type: ignore[assignment]
                if m.topic() == "log":  # type: ignore[attr-defined]
                    acked_log[m.offset()] = m.value()  # type: ignore[attr-defined]
                else:
                    key = m.key()  # type: ignore[attr-defined]
                    prev = acked_table.get(key)
                    if prev is None or prev[0] < m.offset():  # type: ignore[attr-defined]
                        acked_table[key] = (m.offset(), m.value())  # type: ignore[attr-defined]

        def produce() -> None:
            p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                          "enable.idempotence": True, "linger.ms": 5,
                          "message.timeout.ms": 60000, "reconnect.backoff.ms": 20,
                          "reconnect.backoff.max.ms": 200, "retry.backoff.ms": 20})
            i = 0
            while not stop.is_set():
                try:
                    p.produce("log", value=b"m%08d" % i + b"x" * 100, on_delivery=on_delivery)
                    p.produce("table", key=b"k%03d" % (i % KEYS), value=b"v%08d" % i,
                              on_delivery=on_delivery)
                    i += 1
                except BufferError:
                    p.poll(0.05)
                p.poll(0)
                if i % 50 == 0:
                    time.sleep(0.005)
            p.flush(90)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        rng = random.Random(99)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 1.5))
            broker.kill()
            time.sleep(rng.uniform(0.0, 0.2))
            broker.start()
        time.sleep(1.0)
        stop.set()
        t.join(120)
        assert not t.is_alive()
        assert len(acked_log) > 500, f"too few acknowledgements: {len(acked_log)}"
        broker.kill()
        broker.start()
        time.sleep(1.0)  # a few compaction and GC rounds after the restart
        broker.kill()
        # the kills landed while the background work ran: in most of the broker's lives
        # objects were merged, the table was compacted and garbage was deleted
        lives = broker.log_path.read_text(errors="replace").split("storage engine:")[1:]
        for what in ("small objects", "compacted table-0", "garbage objects past"):
            busy = sum(what in life for life in lives)
            assert busy >= len(lives) // 2, f"{what!r} in {busy} of {len(lives)} lives"

        present = {str(p.relative_to(broker.data_dir / "objects"))
                   for p in (broker.data_dir / "objects").rglob("*.obj")}
        dangling = [k for k in referenced_keys(broker.data_dir) if k not in present]
        assert not dangling, f"metadata references deleted objects: {dangling[:5]}"

        broker.start()
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "check",
                      "enable.auto.commit": False, "enable.partition.eof": True})
        c.assign([TopicPartition("log", 0, 0), TopicPartition("table", 0, 0)])
        got_log: dict[int, bytes] = {}
        got_table: dict[bytes, tuple[int, bytes]] = {}
        eof: set[str] = set()
        deadline = time.monotonic() + 90
        while len(eof) < 2:
            assert time.monotonic() < deadline, "could not read everything back"
            for m in c.consume(1000, 1.0):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    eof.add(m.topic())
                    continue
                if m.topic() == "log":
                    got_log[m.offset()] = m.value()
                else:
                    got_table[m.key()] = (m.offset(), m.value())
        c.close()
        lost = [o for o, v in acked_log.items() if got_log.get(o) != v]
        assert not lost, f"{len(lost)} acknowledged log messages lost, e.g. {lost[:5]}"
        # compaction may only drop a value that a later acknowledged one replaced
        stale = [k for k, (o, _v) in acked_table.items() if got_table.get(k, (-1, b""))[0] < o]
        assert not stale, f"latest acknowledged values lost for {len(stale)} keys"
    finally:
        broker.stop()
