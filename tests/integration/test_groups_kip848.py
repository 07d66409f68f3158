"""The KIP-848 consumer protocol against a real broker: the wire (ConsumerGroupHeartbeat
v0/v1, ConsumerGroupDescribe) and librdkafka consumers with `group.protocol=consumer`,
each in its own process so one can be killed without leaving the group."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.consumer_group_describe.v1.request import ConsumerGroupDescribeRequest
from kio.schema.consumer_group_heartbeat.v0.request import (
    ConsumerGroupHeartbeatRequest as HeartbeatV0,
)
from kio.schema.consumer_group_heartbeat.v1.request import (
    ConsumerGroupHeartbeatRequest as HeartbeatV1,
)
from kio.schema.consumer_group_heartbeat.v1.request import TopicPartitions
from kio.schema.errors import ErrorCode

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient

SESSION_MS = 6000
SETTINGS = {"group.consumer.session.timeout.ms": str(SESSION_MS),
            "group.consumer.heartbeat.interval.ms": "500"}
PARTITIONS = 12

# One consumer process: prints one JSON line per event; SIGTERM closes it cleanly (leave).
CHILD = r"""
import json, signal, sys
from confluent_kafka import Consumer, KafkaException
bootstrap, group, topic = sys.argv[1:4]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
def out(**kw):
    print(json.dumps(kw), flush=True)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer",
              "enable.auto.commit": False, "auto.offset.reset": "earliest"})
c.subscribe([topic])
last = None
while not stop:
    msgs = c.consume(100, 0.1)
    for m in msgs:
        if m.error():
            out(ev="error", e=str(m.error()))
        else:
            out(ev="msg", p=m.partition(), o=m.offset(), v=m.value().decode())
    if msgs:
        try:
            c.commit(asynchronous=False)
        except KafkaException as exc:
            out(ev="commit_error", e=str(exc))
    now = sorted(p.partition for p in c.assignment())
    if now != last:
        out(ev="assignment", p=now)
        last = now
c.close()
out(ev="closed")
"""


@dataclass
class Child:
    """A consumer process and what it reported."""

    name: str
    proc: subprocess.Popen[str]
    assignment: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)
            with self.lock:
                if ev["ev"] == "msg":
                    self.values.append(ev["v"])
                elif ev["ev"] == "assignment":
                    self.assignment = ev["p"]
                elif ev["ev"] == "closed":
                    self.closed = True
                else:
                    self.errors.append(f"{ev['ev']}: {ev['e']}")


@pytest.fixture
def spawn(broker_factory: type[BrokerProcess]) -> Iterator[Callable[[str, str, str], Child]]:
    children: list[Child] = []

    def start(bootstrap: str, group: str, topic: str) -> Child:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, bootstrap, group, topic],
                                stdout=subprocess.PIPE, text=True)
        child = Child(f"c{len(children)}", proc)
        threading.Thread(target=child.read, daemon=True).start()
        children.append(child)
        return child

    yield start
    for c in children:
        if c.proc.poll() is None:
            c.proc.kill()
        c.proc.wait()


def wait_for(what: str, cond: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def shares_all(children: list[Child], n: int = PARTITIONS) -> bool:
    """The children's assignments are disjoint, non-empty and cover every partition."""
    seen: list[int] = []
    for c in children:
        with c.lock:
            if not c.assignment:
                return False
            seen += c.assignment
    return sorted(seen) == list(range(n))


def consumed(children: list[Child]) -> set[str]:
    out: set[str] = set()
    for c in children:
        with c.lock:
            out.update(c.values)
    return out


def produce(bootstrap: str, topic: str, prefix: str, n: int) -> set[str]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors: list[KafkaError] = []

    def cb(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    values = [f"{prefix}-{i}" for i in range(n)]
    for i, v in enumerate(values):
        p.produce(topic, v.encode(), partition=i % PARTITIONS, on_delivery=cb)
    assert p.flush(30) == 0 and not errors, errors
    return set(values)


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the result
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def describe(bootstrap: str, group: str) -> Any:
    host, port = bootstrap.split(":")
    raw = RawClient(host, int(port))
    try:
        resp = raw.request(ConsumerGroupDescribeRequest(
            group_ids=(group,), include_authorized_operations=False))
    finally:
        raw.close()
    return resp.groups[0]


def server_assignment(bootstrap: str, group: str) -> dict[str, list[int]]:
    g = describe(bootstrap, group)
    return {m.member_id: sorted(p for tp in m.assignment.topic_partitions
                                for p in tp.partitions) for m in g.members}


def test_wire_heartbeat_join_leave_and_describe(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory(SETTINGS).start()
    create_topic(broker.bootstrap, "wire", 4)
    raw = RawClient("127.0.0.1", broker.port)
    try:
        v0 = raw.request(HeartbeatV0(
            group_id="wire-g", member_id="", member_epoch=0,
            rebalance_timeout=timedelta(seconds=30), subscribed_topic_names=("wire",),
            topic_partitions=()))
        assert v0.error_code == ErrorCode.none, v0
        assert v0.member_id and v0.member_epoch == 1  # v0: the broker names the member
        assert v0.heartbeat_interval == timedelta(milliseconds=500)
        assert v0.assignment is not None
        [tp] = v0.assignment.topic_partitions
        assert sorted(tp.partitions) == [0, 1, 2, 3]

        mine = str(uuid.uuid4())
        v1 = raw.request(HeartbeatV1(
            group_id="wire-g", member_id=mine, member_epoch=0,
            rebalance_timeout=timedelta(seconds=30), subscribed_topic_names=("wire",),
            server_assignor="range", topic_partitions=()))
        assert v1.error_code == ErrorCode.none and v1.member_id == mine
        assert v1.member_epoch == 2 and v1.assignment is not None
        assert v1.assignment.topic_partitions == ()  # the first member still holds them all

        empty_id = raw.request(HeartbeatV1(group_id="wire-g", member_id="", member_epoch=0,
                                           topic_partitions=None))
        assert empty_id.error_code == ErrorCode.invalid_request
        fenced = raw.request(HeartbeatV1(group_id="wire-g", member_id=mine, member_epoch=7,
                                         topic_partitions=None))
        assert fenced.error_code == ErrorCode.fenced_member_epoch

        # The first member revokes what the range assignor moved, then acknowledges.
        revoke = raw.request(HeartbeatV0(group_id="wire-g", member_id=v0.member_id,
                                         member_epoch=1, topic_partitions=None))
        assert revoke.member_epoch == 1 and revoke.assignment is not None
        kept = revoke.assignment.topic_partitions
        assert sum(len(t.partitions) for t in kept) == 2
        ack = raw.request(HeartbeatV0(
            group_id="wire-g", member_id=v0.member_id, member_epoch=1,
            topic_partitions=tuple(TopicPartitions(topic_id=t.topic_id,
                                                   partitions=t.partitions) for t in kept)))
        assert ack.member_epoch == 2
        got = raw.request(HeartbeatV1(group_id="wire-g", member_id=mine, member_epoch=2,
                                      topic_partitions=None))
        assert got.assignment is not None
        assert sum(len(t.partitions) for t in got.assignment.topic_partitions) == 2

        g = describe(broker.bootstrap, "wire-g")
        assert g.error_code == ErrorCode.none and g.group_epoch == 2
        assert g.assignor_name == "range" and len(g.members) == 2
        assert {tp.topic_name for m in g.members for tp in m.assignment.topic_partitions} \
            == {"wire"}
        assert describe(broker.bootstrap, "nope").error_code == ErrorCode.group_id_not_found

        left = raw.request(HeartbeatV1(group_id="wire-g", member_id=mine, member_epoch=-1,
                                       topic_partitions=None))
        assert left.error_code == ErrorCode.none and left.member_epoch == -1
        assert len(describe(broker.bootstrap, "wire-g").members) == 1
    finally:
        raw.close()


def test_classic_group_id_is_not_a_consumer_group(
        broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory({**SETTINGS, "group.initial.rebalance.delay.ms": "0"}).start()
    create_topic(broker.bootstrap, "shared-id", 2)
    classic = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "taken",
                        "auto.offset.reset": "earliest"})
    classic.subscribe(["shared-id"])
    raw = RawClient("127.0.0.1", broker.port)
    try:
        deadline = time.monotonic() + 30
        while not classic.assignment() and time.monotonic() < deadline:
            classic.poll(0.2)
        assert classic.assignment()
        hb = raw.request(HeartbeatV1(
            group_id="taken", member_id=str(uuid.uuid4()), member_epoch=0,
            rebalance_timeout=timedelta(seconds=30), subscribed_topic_names=("shared-id",),
            topic_partitions=()))
        assert hb.error_code == ErrorCode.group_id_not_found
        assert describe(broker.bootstrap, "taken").error_code == ErrorCode.group_id_not_found
    finally:
        raw.close()
        classic.close()


def test_librdkafka_group_protocol_consumer(broker_factory: type[BrokerProcess],
                                            spawn: Callable[[str, str, str], Child]) -> None:
    """3 consumers share 12 partitions; one leaves, one is killed (no leave): its partitions
    come back within the session timeout; commits resume; nothing is skipped."""
    broker = broker_factory(SETTINGS).start()
    bs, topic, group = broker.bootstrap, "kip848", "kip848-g"
    create_topic(bs, topic, PARTITIONS)
    sent = produce(bs, topic, "a", 600)
    children = [spawn(bs, group, topic) for _ in range(3)]
    wait_for("3 consumers sharing 12 partitions", lambda: shares_all(children), 60)
    assert all(len(c.assignment) == 4 for c in children)
    on_server = server_assignment(bs, group)
    assert sorted(p for ps in on_server.values() for p in ps) == list(range(PARTITIONS))
    wait_for("first batch consumed", lambda: consumed(children) >= sent, 30)

    leaver, victim, survivor = children
    leaver.proc.terminate()  # close(): a leave heartbeat
    wait_for("clean close", lambda: leaver.closed, 30)
    took = wait_for("2 consumers sharing 12 partitions",
                    lambda: shares_all([victim, survivor]), 20)
    assert took < SESSION_MS / 1000, "a leave must not wait for the session timeout"
    sent |= produce(bs, topic, "b", 600)
    wait_for("second batch consumed", lambda: consumed(children) >= sent, 30)

    victim.proc.kill()  # no leave: only the session timeout can free its partitions
    killed_at = time.monotonic()
    sent |= produce(bs, topic, "c", 600)
    wait_for("the survivor owning everything", lambda: survivor.assignment == list(
        range(PARTITIONS)), SESSION_MS / 1000 + 15)
    assert time.monotonic() - killed_at < SESSION_MS / 1000 + 10
    wait_for("third batch consumed", lambda: consumed(children) >= sent, 30)
    assert list(server_assignment(bs, group).values()) == [list(range(PARTITIONS))]

    survivor.proc.terminate()
    wait_for("survivor closed", lambda: survivor.closed, 30)
    for c in children:
        assert not c.errors, c.errors
    # Committed offsets: a new member of the group starts exactly where the others stopped.
    fresh = spawn(bs, group, topic)
    wait_for("a new member owning everything", lambda: fresh.assignment == list(
        range(PARTITIONS)), 30)
    late = produce(bs, topic, "d", 120)
    wait_for("fourth batch consumed", lambda: set(fresh.values) >= late, 30)
    time.sleep(1)
    assert set(fresh.values) == late, "consumed again what the group had committed"
    c = Consumer({"bootstrap.servers": bs, "group.id": group})
    committed = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    c.close()
    assert sum(tp.offset for tp in committed) >= 600 * 3


def test_group_survives_broker_restart(broker_factory: type[BrokerProcess],
                                       spawn: Callable[[str, str, str], Child]) -> None:
    """kill -9 the broker under two live members: after the restart they carry on with
    consistent assignments and nothing is lost."""
    broker = broker_factory(SETTINGS).start()
    bs, topic, group = broker.bootstrap, "restart848", "restart848-g"
    create_topic(bs, topic, PARTITIONS)
    children = [spawn(bs, group, topic) for _ in range(2)]
    wait_for("2 consumers sharing 12 partitions", lambda: shares_all(children), 60)
    sent = produce(bs, topic, "a", 240)
    wait_for("first batch consumed", lambda: consumed(children) >= sent, 30)
    before = describe(bs, group)
    members = {m.member_id for m in before.members}

    broker.kill()
    broker.start()
    sent |= produce(bs, topic, "b", 240)
    wait_for("second batch consumed", lambda: consumed(children) >= sent, 60)
    g = describe(bs, group)
    # The same members carried on with their epochs: no rejoin, no rebalance.
    assert g.error_code == ErrorCode.none and g.group_epoch == before.group_epoch
    assert {m.member_id for m in g.members} == members
    wait_for("assignments consistent after restart", lambda: shares_all(children), 30)
    on_server = server_assignment(bs, group)
    assert sorted(p for ps in on_server.values() for p in ps) == list(range(PARTITIONS))
    for c in children:
        assert not c.errors, c.errors
