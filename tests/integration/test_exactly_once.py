"""Exactly-once consume-transform-produce against a real broker process (issue 4).

A transformer process (confluent-kafka) reads numbered messages from an input topic with a
read_committed group consumer and writes "out-<n>" for each into an output topic inside a
transaction that also commits the consumed offsets (`send_offsets_to_transaction`). It runs as
a subprocess so it can be SIGKILLed mid-way; a restarted one (same transactional.id, same
group.id) fences the dead one, aborts its open transaction and carries on from the committed
offsets. At the end the output, read with read_committed, holds every input number once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess

N = 10_000
PARTS = 4
IN, OUT = "eos-in", "eos-out"
GROUP, TID = "eos-group", "eos-transformer"
SETTINGS = {"group.initial.rebalance.delay.ms": "0", "group.min.session.timeout.ms": "1000"}

TRANSFORMER = '''
import signal, sys, time
from pathlib import Path
from confluent_kafka import Consumer, Producer

bootstrap, src, dst, group, tid, delay, stall_at, stall_file = sys.argv[1:9]
delay, stall_at = float(delay), int(stall_at)
stopping = False


def on_term(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid,
                     "transaction.timeout.ms": 10000, "linger.ms": 5})
producer.init_transactions(30)
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "isolation.level": "read_committed", "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                     "heartbeat.interval.ms": 500})
consumer.subscribe([src])
txns = 0
while not stopping:
    msgs = consumer.consume(100, 0.2)
    if not msgs:
        continue
    producer.begin_transaction()
    for m in msgs:
        if m.error() is not None:
            sys.exit(f"consume error: {m.error()}")
        n = m.value().decode().removeprefix("in-")
        producer.produce(dst, value=f"out-{n}".encode(), partition=m.partition())
    time.sleep(delay)  # a transaction open, its records (partly) sent
    positions = consumer.position(consumer.assignment())
    if stall_at and sum(max(tp.offset, 0) for tp in positions) >= stall_at:
        # leave this transaction open, its records written, until SIGKILL
        producer.flush(30)
        Path(stall_file).write_text(str(positions))
        print(f"stalled after {txns} transactions", flush=True)
        time.sleep(3600)
    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    txns += 1
print(f"stopping after {txns} transactions", flush=True)
consumer.close()
'''


class Transformer:
    def __init__(self, tmp_path: Path, broker: BrokerProcess, delay: float = 0,
                 stall_at: int = 0) -> None:
        script = tmp_path / "transformer.py"
        script.write_text(TRANSFORMER)
        self.stall_file = tmp_path / f"stalled-{time.monotonic_ns()}"
        self.log_path = tmp_path / f"transformer-{time.monotonic_ns()}.log"
        self.logf = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), broker.bootstrap, IN, OUT, GROUP, TID,
             str(delay), str(stall_at), str(self.stall_file)],
            stdout=self.logf, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            rc = self.proc.wait(30)
        finally:
            self.logf.close()
        return rc


@pytest.fixture
def env(broker_factory: type[BrokerProcess], tmp_path: Path) -> Iterator[tuple[
        BrokerProcess, list[Transformer]]]:
    broker = broker_factory(SETTINGS).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(IN, PARTS, 1), NewTopic(OUT, PARTS, 1)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    for n in range(N):
        p.produce(IN, value=f"in-{n}".encode(), partition=n % PARTS)
    assert p.flush(30) == 0
    transformers: list[Transformer] = []
    yield broker, transformers
    for t in transformers:
        if t.alive():
            t.kill()


class Offsets:
    """Committed offsets of the transformer's group, read without joining it. With
    read_uncommitted, OffsetFetch doesn't ask for stable offsets (require_stable), so offsets
    pending in an open transaction don't block it: it returns the last committed ones."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": GROUP,
                           "enable.auto.commit": False, "isolation.level": "read_uncommitted"})
        self.ends = [self.c.get_watermark_offsets(TopicPartition(IN, i), 10)[1]
                     for i in range(PARTS)]
        assert sum(self.ends) == N

    def committed(self) -> list[int]:
        tps = self.c.committed([TopicPartition(IN, i) for i in range(PARTS)], 10)
        return [max(tp.offset, 0) for tp in tps]

    def close(self) -> None:
        self.c.close()


def wait_for(cond: Callable[[], bool], what: str, t: Transformer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert t.alive(), f"transformer died before {what}:\n{t.log()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{t.log()}"
        time.sleep(0.05)


def read_output(broker: BrokerProcess, isolation: str) -> list[str]:
    """Every value in the output topic, read to each partition's end (its last stable
    offset for read_committed) with enable.partition.eof. In read_committed the records
    of each partition must be the input's, in the input's order."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"verify-{isolation}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(OUT, i, 0) for i in range(PARTS)])
    got: list[str] = []
    by_part: dict[int, list[int]] = {i: [] for i in range(PARTS)}
    eof: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(eof) < PARTS:
            assert time.monotonic() < deadline, f"read {len(got)}, eof on {sorted(eof)}"
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    assert m.error().code() == -191, m.error()  # _PARTITION_EOF
                    eof.add(m.partition())
                else:
                    eof.discard(m.partition())
                    got.append(m.value().decode())
                    by_part[m.partition()].append(int(got[-1].removeprefix("out-")))
    finally:
        c.close()
    if isolation == "read_committed":
        for i, ns in by_part.items():
            assert ns == list(range(i, N, PARTS)), f"partition {i}: {ns[:10]}..."
    return got


def finish_and_verify(broker: BrokerProcess, transformers: list[Transformer],
                      offsets: Offsets) -> list[str]:
    """Run a transformer until the group's committed offsets reach the input's end, stop
    it, and check the committed output holds each input number exactly once."""
    t = Transformer(broker.data_dir.parent, broker)
    transformers.append(t)
    wait_for(lambda: offsets.committed() == offsets.ends, "the input to be consumed", t)
    assert t.stop() == 0, t.log()
    assert offsets.committed() == offsets.ends
    offsets.close()
    out = read_output(broker, "read_committed")
    dupes = {v: k for v, k in Counter(out).items() if k > 1}
    assert not dupes, f"{len(dupes)} values duplicated, e.g. {list(dupes.items())[:5]}"
    assert len(out) == N
    assert sorted(out) == sorted(f"out-{n}" for n in range(N))
    return out


def test_consume_transform_produce(env: tuple[BrokerProcess, list[Transformer]]) -> None:
    broker, transformers = env
    offsets = Offsets(broker)
    finish_and_verify(broker, transformers, offsets)
    # nothing was aborted, so read_uncommitted sees the same records (markers skipped)
    assert len(read_output(broker, "read_uncommitted")) == N


def test_transformer_killed_midway_and_restarted(
        env: tuple[BrokerProcess, list[Transformer]]) -> None:
    broker, transformers = env
    offsets = Offsets(broker)
    tmp = broker.data_dir.parent
    # 1. killed wherever it happens to be once >= 3,000 outputs are committed (each of its
    #    transactions stays open a little while, so most likely in the middle of one)
    first = Transformer(tmp, broker, delay=0.02)
    transformers.append(first)
    wait_for(lambda: sum(offsets.committed()) >= 3000, "3,000 committed", first)
    first.kill()
    at_kill = sum(offsets.committed())
    assert at_kill < N, "the transformer finished before it could be killed mid-way"
    # 2. a restarted one (fencing the first) is killed with a transaction open and its
    #    records already written to the output: those must be aborted, never read
    second = Transformer(tmp, broker, stall_at=min(at_kill + 2000, N - 500))
    transformers.append(second)
    wait_for(second.stall_file.exists, "the open transaction", second)
    at_stall = sum(offsets.committed())
    assert at_kill <= at_stall < N
    second.kill()
    # 3. one more restart finishes the input
    finish_and_verify(broker, transformers, offsets)
    uncommitted = read_output(broker, "read_uncommitted")
    assert len(uncommitted) > N, "the killed open transaction left no aborted records"
    assert set(uncommitted) == {f"out-{n}" for n in range(N)}
