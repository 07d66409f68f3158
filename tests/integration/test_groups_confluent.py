"""Classic consumer groups with confluent-kafka (librdkafka) against a real broker process.

Three members share a 12-partition topic; one leaves (close), one is killed (SIGKILL of its
process: no LeaveGroup), and the last takes every partition within the session timeout,
resuming from the committed offsets. Messages carry their number, so the test sees exactly
what was consumed, by whom, and how often. Run with the eager (range) and the cooperative
(cooperative-sticky) assignors. A static member (group.instance.id) restarts without making
the other member rebalance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess

PARTITIONS = 12
SESSION_MS = 6000
SETTINGS = {"group.initial.rebalance.delay.ms": "0"}

CHILD = r"""
import json, sys
from confluent_kafka import Consumer, KafkaException
c = Consumer(json.loads(sys.argv[1]))
c.subscribe([sys.argv[2]])
last = None
def out(**kw):
    print(json.dumps(kw), flush=True)
while True:
    msgs = [m for m in c.consume(100, 0.05) if m.error() is None]
    a = sorted(tp.partition for tp in c.assignment())
    if a != last:
        last = a
        out(assignment=a)
    if msgs:
        out(msgs=[(m.partition(), m.offset(), int(m.value())) for m in msgs])
        try:
            done = c.commit(asynchronous=False)
            out(committed=[(tp.partition, tp.offset) for tp in done if tp.error is None])
        except KafkaException as exc:
            out(commit_error=str(exc))
"""


class Member:
    """One consumer's record: what it consumed (with the phase it was in), what it
    committed, what it holds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumed: list[tuple[int, int, int, int]] = []  # phase, partition, offset, n
        self.committed: dict[int, int] = {}
        self.assignment: set[int] = set()
        self.phase = 0
        self.commit_refused: set[int] = set()  # numbers no confirmed commit covers

    def record(self, msgs: list[tuple[int, int, int]]) -> None:
        self.consumed += [(self.phase, p, o, n) for p, o, n in msgs]


class Local(Member):
    """A consumer in this process, polled by `pump`."""

    def __init__(self, name: str, conf: dict[str, Any], topic: str) -> None:
        super().__init__(name)
        self.consumer = Consumer(conf)
        self.consumer.subscribe([topic])

    def poll(self) -> None:
        msgs = [m for m in self.consumer.consume(100, 0.02) if m.error() is None]
        self.assignment = {tp.partition for tp in self.consumer.assignment()}
        if not msgs:
            return
        self.record([(m.partition(), m.offset(), int(m.value())) for m in msgs])
        confirmed: dict[int, int] = {}
        try:
            for tp in self.consumer.commit(asynchronous=False) or ():
                if tp.error is None:
                    self.committed[tp.partition] = confirmed[tp.partition] = tp.offset
        except KafkaException:  # a rebalance: the next owner consumes these again
            pass
        # at least once: a record may come again unless a commit past it was confirmed
        # (refused, raised, or left out: a rebalance took the partition meanwhile)
        self.commit_refused.update(int(m.value()) for m in msgs
                                   if confirmed.get(m.partition(), -1) <= m.offset())


class Child(Member):
    """A consumer in its own process (so it can be killed), reporting on stdout."""

    def __init__(self, name: str, conf: dict[str, Any], topic: str) -> None:
        super().__init__(name)
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(conf), topic],
                                     stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            rec = json.loads(line)
            with self.lock:
                if "assignment" in rec:
                    self.assignment = set(rec["assignment"])
                if "msgs" in rec:
                    self.record([tuple(x) for x in rec["msgs"]])  # type: ignore[misc]
                for p, o in rec.get("committed", ()):
                    self.committed[p] = o

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def pump(locals_: list[Local], until: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll the local consumers until `until()` holds; returns the seconds it took."""
    start = time.monotonic()
    while not until():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        for c in locals_:
            c.poll()
    return time.monotonic() - start


def shares_all(members: list[Member]) -> bool:
    sets = [m.assignment for m in members]
    return sum(len(s) for s in sets) == PARTITIONS and set().union(*sets) == set(
        range(PARTITIONS)) and all(sets)


def produce(bootstrap: str, topic: str, numbers: range) -> dict[int, int]:
    """Message n goes to partition n % 12; returns each partition's end offset."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for n in numbers:
        p.produce(topic, str(n).encode(), partition=n % PARTITIONS)
    assert p.flush(30) == 0
    ends = {}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    for part in range(PARTITIONS):
        ends[part] = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10)[1]
    c.close()
    return ends


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def consumed(members: list[Member]) -> Counter[int]:
    return Counter(n for m in members for _, _, _, n in m.consumed)


def group_conf(bootstrap: str, group: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": 1000, **extra}


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_three_members_leave_and_kill(broker_factory: type[BrokerProcess],
                                      strategy: str) -> None:
    broker = broker_factory(SETTINGS).start()
    topic = f"shared-{strategy}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    conf = group_conf(broker.bootstrap, f"g-{strategy}",
                      **{"partition.assignment.strategy": strategy})
    a, b = Local("a", conf, topic), Local("b", conf, topic)
    c = Child("c", conf, topic)
    members: list[Member] = [a, b, c]
    try:
        # 1. three members share the twelve partitions with no overlap
        pump([a, b], lambda: shares_all(members), 60, "three members to share the topic")
        n1 = 1200
        produce(broker.bootstrap, topic, range(n1))
        pump([a, b], lambda: len(consumed(members)) == n1, 60, "phase 1 consumed")
        pump([a, b], lambda: all(len(m.committed) == len(m.assignment) for m in members),
             30, "phase 1 committed")
        assert set(consumed(members).values()) == {1}, "a message was consumed twice"
        assert all(m.consumed for m in members), "every member consumed"

        # 2. a leaves: b and c take its partitions from its committed offsets
        held_by_a = set(a.assignment)
        a.consumer.close()
        for m in members:
            m.phase = 2
        pump([b], lambda: shares_all([b, c]), 30, "b and c to share after a left")
        n2 = 2400
        ends = produce(broker.bootstrap, topic, range(n1, n2))
        pump([b], lambda: len(consumed(members)) == n2, 60, "phase 2 consumed")
        assert set(consumed(members).values()) == {1}, "resumed before a's committed offset"
        assert held_by_a  # and nothing of a's was read twice: checked by the line above

        # 3. c is killed mid-stream: b gets everything within the session timeout
        for m in members:
            m.phase = 3
        n3 = 4800
        ends = produce(broker.bootstrap, topic, range(n2, n3))
        pump([b], lambda: any(ph == 3 for ph, *_ in c.consumed), 30, "c consuming phase 3")
        with c.lock:
            c.kill()
            c_committed = dict(c.committed)
            c_consumed = list(c.consumed)
        took = pump([b], lambda: b.assignment == set(range(PARTITIONS)), 30,
                    "b to take every partition")
        assert took < SESSION_MS / 1000 + 5, f"reassigned after {took:.1f}s"
        pump([b], lambda: len(consumed(members)) == n3, 60, "phase 3 consumed")

        # nothing skipped: every offset of every partition was consumed
        for part in range(PARTITIONS):
            offsets = {o for m in members for _, p, o, _ in m.consumed if p == part}
            assert offsets == set(range(ends[part])), f"partition {part} has gaps"
        # b resumed c's partitions at c's committed offsets: only c's uncommitted tail, and
        # batches whose commit a rebalance refused (at least once), can come twice
        twice = {n for n, k in consumed(members).items() if k > 1}
        c_tail = {n for _, p, o, n in c_consumed if o >= c_committed.get(p, 0)}
        refused = set().union(*(m.commit_refused for m in members))
        assert twice <= c_tail | refused, sorted(twice - c_tail - refused)[:10]
        for _, p, o, _ in (x for x in b.consumed if x[0] == 3 and x[1] in c.assignment):
            assert o >= c_committed.get(p, 0), (p, o, c_committed.get(p))
        # what the group committed, read back from the broker, is every end offset (once b
        # has re-read and committed what a rebalance refused a commit for, if anything)
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]

        def group_committed() -> dict[int, int]:
            return {tp.partition: tp.offset for tp in b.consumer.committed(parts, 10)}

        pump([b], lambda: group_committed() == ends, 30,
             "the group's committed offsets to reach every end offset")
    finally:
        if c.proc.poll() is None:
            c.kill()
        b.consumer.close()


def test_static_member_restarts_without_rebalance(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory(SETTINGS).start()
    topic = "static"
    create_topic(broker.bootstrap, topic, 6)
    rebalances: list[str] = []
    conf = group_conf(broker.bootstrap, "g-static")
    other = Consumer(conf)
    other.subscribe([topic], on_assign=lambda _c, ps: rebalances.append("assign"),
                    on_revoke=lambda _c, ps: rebalances.append("revoke"))

    def static_member() -> Consumer:
        c = Consumer({**conf, "group.instance.id": "static-1"})
        c.subscribe([topic])
        return c

    def assigned(c: Consumer) -> set[int]:
        return {tp.partition for tp in c.assignment()}

    member = static_member()
    deadline = time.monotonic() + 60
    while not (len(assigned(member)) == 3 and len(assigned(other)) == 3):
        assert time.monotonic() < deadline, "members did not share the partitions"
        member.poll(0.05)
        other.poll(0.05)
    before, others_before, seen = assigned(member), assigned(other), len(rebalances)

    member.close()  # a static member sends no LeaveGroup
    start = time.monotonic()
    member = static_member()
    while assigned(member) != before:
        assert time.monotonic() - start < SESSION_MS / 1000, "static member not back in time"
        member.poll(0.05)
        other.poll(0.05)
    for _ in range(60):  # 3 s more (three heartbeats): the other member must not rebalance
        member.poll(0.025)
        other.poll(0.025)
    assert assigned(other) == others_before and len(rebalances) == seen, rebalances
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    desc = admin.describe_consumer_groups(["g-static"])["g-static"].result(10)
    assert sorted(m.group_instance_id or "" for m in desc.members) == ["", "static-1"]
    member.close()
    other.close()
