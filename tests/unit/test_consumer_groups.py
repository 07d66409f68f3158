"""The KIP-848 group state machine (coordinator.consumer) with a fake clock, fake topics and
a fake state log; clients are simulated the way librdkafka behaves: join with epoch 0,
drop partitions the moment an assignment lacks them, acknowledge every new assignment
with its owned partitions on the next heartbeat, send nulls otherwise."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tidelog.coordinator.consumer import ConsumerGroups, HeartbeatRequest, HeartbeatResponse
from tidelog.coordinator.consumer_state import Group, Member, MemberState, decode, encode
from tidelog.coordinator.coordinator import CoordinatorConfig

SESSION_MS = 6000
GROUP = "g"


@dataclass
class FakeTopic:
    name: str
    topic_id: uuid.UUID
    partitions: list[int]
    internal: bool = False

    @property
    def count(self) -> int:
        return len(self.partitions)


class FakeTopics:
    def __init__(self) -> None:
        self.topics: dict[str, FakeTopic] = {}
        self.by_id: dict[uuid.UUID, FakeTopic] = {}

    def add(self, name: str, n: int, internal: bool = False) -> FakeTopic:
        t = FakeTopic(name, uuid.uuid4(), list(range(n)), internal)
        self.topics[name] = t
        self.by_id[t.topic_id] = t
        return t


class FakeLog:
    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.writes = 0

    async def write(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None:
        self.writes += 1
        for k, v in entries:
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v


class FakeClassic:
    def __init__(self) -> None:
        self.groups: set[str] = set()

    def has(self, group_id: str) -> bool:
        return group_id in self.groups


@dataclass
class FakeCoordinator:
    topics: FakeTopics = field(default_factory=FakeTopics)
    log: FakeLog = field(default_factory=FakeLog)
    classic: FakeClassic = field(default_factory=FakeClassic)
    config: CoordinatorConfig = field(default_factory=lambda: CoordinatorConfig(
        consumer_session_timeout_ms=SESSION_MS, consumer_heartbeat_interval_ms=500))
    now: int = 1_000_000

    def now_ms(self) -> int:
        return self.now


def new_groups(coord: FakeCoordinator) -> ConsumerGroups:
    groups = ConsumerGroups(coord)  # type: ignore[arg-type]
    groups.restore(dict(coord.log.state))
    return groups


Parts = dict[uuid.UUID, frozenset[int]]


def flat(parts: Parts) -> set[tuple[uuid.UUID, int]]:
    return {(t, p) for t, ps in parts.items() for p in ps}


class Client:
    """A consumer as librdkafka runs one; `owned` is what it consumes right now."""

    def __init__(self, groups: ConsumerGroups, topics: tuple[str, ...], name: str,
                 instance_id: str | None = None, assignor: str | None = None) -> None:
        self.groups = groups
        self.topics = topics
        self.member_id = name
        self.instance_id = instance_id
        self.assignor = assignor
        self.epoch = 0
        self.owned: Parts = {}
        self.ack = False
        self.last: HeartbeatResponse | None = None

    async def beat(self, **override: Any) -> HeartbeatResponse:
        joining = self.epoch == 0
        req = HeartbeatRequest(
            group_id=GROUP, member_id=self.member_id, member_epoch=self.epoch,
            instance_id=self.instance_id if joining else None,
            rebalance_timeout_ms=30_000 if joining else -1,
            subscribed_topic_names=self.topics if joining else None,
            server_assignor=self.assignor if joining else None,
            owned=self.owned if (joining or self.ack) else None, client_id="c")
        for k, v in override.items():
            req = _replace(req, k, v)
        resp = await self.groups.heartbeat(req)
        self.last = resp
        if resp.error is not None:
            return resp
        self.epoch = resp.member_epoch
        if resp.assignment is not None:
            self.ack = True  # the next heartbeat says what it now owns
        elif req.owned is not None:
            self.ack = False
        if resp.assignment is not None:
            self.owned = {t: ps for t, ps in resp.assignment.items() if ps}
        return resp

    async def leave(self, epoch: int = -1) -> HeartbeatResponse:
        resp = await self.groups.heartbeat(HeartbeatRequest(
            group_id=GROUP, member_id=self.member_id, member_epoch=epoch,
            instance_id=self.instance_id))
        self.owned, self.epoch = {}, 0
        return resp


def _replace(req: HeartbeatRequest, name: str, value: Any) -> HeartbeatRequest:
    fields = {f: getattr(req, f) for f in HeartbeatRequest.__slots__}
    fields[name] = value
    return HeartbeatRequest(**fields)


def assert_disjoint(clients: Sequence[Client]) -> None:
    seen: set[tuple[uuid.UUID, int]] = set()
    for c in clients:
        mine = flat(c.owned)
        assert not mine & seen, f"{c.member_id} consumes a partition another one consumes"
        seen |= mine


async def settle(clients: Sequence[Client], rounds: int = 10) -> None:
    """Heartbeat everyone until the group is stable; no two ever consume one partition."""
    for _ in range(rounds):
        for c in clients:
            resp = await c.beat()
            assert resp.error is None, resp
            assert_disjoint(clients)
        g = clients[0].groups.groups[GROUP]
        if g.state == "Stable" and not any(c.ack for c in clients):
            return
    raise AssertionError(f"group did not settle: {clients[0].groups.groups[GROUP].state}")


@pytest.fixture
def coord() -> FakeCoordinator:
    c = FakeCoordinator()
    c.topics.add("t", 12)
    return c


async def test_three_members_share_twelve_partitions(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    clients = [Client(groups, ("t",), f"m{i}") for i in range(3)]
    for c in clients:
        await c.beat()
        assert_disjoint(clients)
    await settle(clients)
    assert sorted(len(flat(c.owned)) for c in clients) == [4, 4, 4]
    assert set().union(*(flat(c.owned) for c in clients)) == flat(
        {coord.topics.topics["t"].topic_id: frozenset(range(12))})
    g = groups.groups[GROUP]
    assert g.epoch == g.assignment_epoch == 3
    assert all(c.epoch == 3 for c in clients)
    assert groups.list() == [(GROUP, "Stable", "consumer")]
    assert groups.has(GROUP)


async def test_partition_moves_only_after_revocation(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    first = await a.beat()
    assert first.member_epoch == 1 and len(flat(a.owned)) == 12
    await a.beat()  # acknowledges
    joined = await b.beat()
    # b is at the new epoch but gets nothing yet: a still holds everything.
    assert joined.member_epoch == 2 and joined.assignment == {}
    assert groups.groups[GROUP].state == "Reconciling"
    revoke = await a.beat()
    assert revoke.member_epoch == 1  # a stays at its epoch until it has revoked
    assert revoke.assignment is not None and len(flat(revoke.assignment)) == 6
    assert groups.groups[GROUP].members["a"].state is MemberState.UNREVOKED
    waiting = await b.beat()
    assert waiting.assignment is None and not b.owned  # a has not acknowledged yet
    acked = await a.beat()  # owned = the 6 it kept
    assert acked.member_epoch == 2
    given = await b.beat()
    assert given.assignment is not None and len(flat(given.assignment)) == 6
    assert_disjoint([a, b])
    await settle([a, b])
    assert groups.groups[GROUP].state == "Stable"


async def test_missing_owned_list_keeps_partitions_revoking(coord: FakeCoordinator) -> None:
    """A heartbeat without an owned list proves nothing: nothing moves on a guess."""
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a])
    await b.beat()
    await a.beat()
    for _ in range(3):
        await a.beat(owned=None)
        await b.beat()
        assert not b.owned
    await settle([a, b])


async def test_leave_reassigns_partitions(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    clients = [Client(groups, ("t",), f"m{i}") for i in range(3)]
    await settle(clients)
    epoch = groups.groups[GROUP].epoch
    resp = await clients[2].leave()
    assert resp.error is None and resp.member_epoch == -1
    assert groups.groups[GROUP].epoch == epoch + 1
    await settle(clients[:2])
    assert sorted(len(flat(c.owned)) for c in clients[:2]) == [6, 6]
    gone = await clients[2].beat(member_epoch=3)
    assert gone.error == "unknown_member_id"
    await clients[0].leave()
    await clients[1].leave()
    assert groups.list() == [(GROUP, "Empty", "consumer")]
    assert not groups.has(GROUP)


async def test_session_expiry_removes_member(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a, b])
    for _ in range(4):  # b stops heartbeating (killed); a keeps going
        coord.now += SESSION_MS // 4
        await a.beat()
        await groups.tick(coord.now)
    assert "b" in groups.groups[GROUP].members
    coord.now += SESSION_MS // 4
    await a.beat()
    await groups.tick(coord.now)
    assert set(groups.groups[GROUP].members) == {"a"}
    await settle([a])
    assert len(flat(a.owned)) == 12
    assert (await b.beat()).error == "unknown_member_id"


async def test_rebalance_timeout_removes_member_that_does_not_revoke(
        coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a])
    await b.beat()
    for _ in range(40):  # a heartbeats but never reports having revoked
        coord.now += 1000
        await a.beat(owned=a.owned | {coord.topics.topics["t"].topic_id: frozenset(range(12))})
        await b.beat()
        await groups.tick(coord.now)
    assert set(groups.groups[GROUP].members) == {"b"}
    assert len(flat(b.owned)) == 12


async def test_restore_keeps_group_and_epochs(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    clients = [Client(groups, ("t",), f"m{i}") for i in range(3)]
    await settle(clients)
    before = {c.member_id: (c.epoch, flat(c.owned)) for c in clients}
    assert coord.log.state.keys() == {b"c/g"}

    coord.now += 10_000  # the broker restarts
    restored = new_groups(coord)
    g = restored.groups[GROUP]
    assert g.state == "Stable" and set(g.members) == {"m0", "m1", "m2"}
    for c in clients[:2]:  # two keep heartbeating with their epochs
        c.groups = restored
        resp = await c.beat()
        assert resp.error is None and resp.member_epoch == before[c.member_id][0]
        assert flat(c.owned) == before[c.member_id][1]
    coord.now += SESSION_MS + 1
    for c in clients[:2]:
        await c.beat()
    await restored.tick(coord.now)  # the third never came back
    assert set(restored.groups[GROUP].members) == {"m0", "m1"}
    await settle(clients[:2])
    assert sorted(len(flat(c.owned)) for c in clients[:2]) == [6, 6]
    # and that state is durable too
    again = new_groups(coord)
    assert {m: flat(x.assigned) for m, x in again.groups[GROUP].members.items()} == {
        c.member_id: flat(c.owned) for c in clients[:2]}


async def test_fencing_errors(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a, b])
    assert (await a.beat(member_epoch=a.epoch + 1)).error == "fenced_member_epoch"
    assert (await a.beat(member_epoch=a.epoch - 1)).error == "fenced_member_epoch"
    await b.leave()
    assert (await Client(groups, ("t",), "x").beat(member_epoch=1)).error == \
        "unknown_member_id"
    assert (await Client(groups, ("t",), "y", assignor="sticky").beat()).error == \
        "unsupported_assignor"
    assert (await a.beat(group_id="")).error == "invalid_request"
    assert (await Client(groups, ("t",), "z").beat(rebalance_timeout_ms=-1)).error == \
        "invalid_request"
    assert (await a.beat(member_epoch=-3)).error == "invalid_request"
    assert (await a.beat(subscribed_topic_regex="(")).error == "invalid_regular_expression"
    assert (await Client(groups, ("t",), "q").beat(group_id="nope", member_epoch=4)).error \
        == "unknown_member_id"
    assert set(groups.groups) == {GROUP}
    assert set(groups.groups[GROUP].members) == {"a"}


async def test_previous_epoch_accepted_when_response_was_lost(
        coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a, b])
    epoch = a.epoch
    await Client(groups, ("t",), "c").beat()  # bumps the group epoch
    await a.beat()  # a revokes down to 4 (answer received)
    lost = await a.beat()  # the ack: a moves to the new epoch, but this answer is "lost"
    assert lost.member_epoch == epoch + 1
    retry = await a.beat(member_epoch=epoch, owned=a.owned)
    assert retry.error is None and retry.member_epoch == epoch + 1
    assert (await a.beat(member_epoch=epoch, owned=None)).error == "fenced_member_epoch"


async def test_rejoin_with_epoch_zero_resets_member(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a, b])
    epoch = groups.groups[GROUP].epoch
    a.epoch, a.owned = 0, {}  # librdkafka after FENCED_MEMBER_EPOCH: same id, epoch 0
    resp = await a.beat()
    assert resp.error is None and resp.member_epoch == epoch
    assert len(flat(a.owned)) == 6
    assert groups.groups[GROUP].epoch == epoch  # no rebalance for the others


async def test_static_member_leave_and_replace(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a = Client(groups, ("t",), "a1", instance_id="ia")
    b = Client(groups, ("t",), "b", instance_id="ib")
    await settle([a, b])
    kept = flat(a.owned)
    epoch = groups.groups[GROUP].epoch
    replacement = Client(groups, ("t",), "a2", instance_id="ia")
    assert (await replacement.beat()).error == "unreleased_instance_id"
    assert (await a.beat(member_epoch=-2, instance_id=None)).error == "invalid_request"
    assert (await a.leave(epoch=-2)).member_epoch == -2
    await b.beat()
    assert groups.groups[GROUP].epoch == epoch  # the partitions wait for the instance
    resp = await replacement.beat()
    assert resp.error is None and resp.member_epoch == epoch
    assert flat(replacement.owned) == kept
    assert set(groups.groups[GROUP].members) == {"a2", "b"}
    impostor = await Client(groups, ("t",), "a1", instance_id="ia").beat(member_epoch=epoch)
    assert impostor.error == "fenced_instance_id"


async def test_subscription_and_partition_changes_bump_epoch(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    u = coord.topics.add("u", 4)
    a, b = Client(groups, ("t",), "a"), Client(groups, ("t",), "b")
    await settle([a, b])
    epoch = groups.groups[GROUP].epoch
    await b.beat(subscribed_topic_names=("t", "u"))
    assert groups.groups[GROUP].epoch == epoch + 1
    await settle([a, b])
    assert {p for t, p in flat(b.owned) if t == u.topic_id} == {0, 1, 2, 3}
    u.partitions.extend(range(4, 8))  # partitions added to "u"
    await a.beat()
    assert groups.groups[GROUP].epoch == epoch + 2
    await settle([a, b])
    assert {p for t, p in flat(b.owned) if t == u.topic_id} == set(range(8))
    assert groups.subscribed_topics(GROUP) == {"t", "u"}


async def test_regex_subscription(coord: FakeCoordinator) -> None:
    coord.topics.add("orders-1", 2)
    coord.topics.add("orders-2", 2)
    coord.topics.add("__orders", 2, internal=True)
    groups = new_groups(coord)
    a = Client(groups, (), "a")
    await a.beat(subscribed_topic_names=None, subscribed_topic_regex="orders-.*")
    await settle([a])
    names = {coord.topics.by_id[t].name for t, _ in flat(a.owned)}
    assert names == {"orders-1", "orders-2"}
    coord.topics.add("orders-3", 1)
    await settle([a])
    assert len(flat(a.owned)) == 5


async def test_range_assignor_chosen_by_members(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a = Client(groups, ("t",), "a", assignor="range")
    b = Client(groups, ("t",), "b", assignor="range")
    await settle([a, b])
    assert groups.groups[GROUP].assignor == "range"
    tid = coord.topics.topics["t"].topic_id
    assert a.owned == {tid: frozenset(range(6))}
    assert b.owned == {tid: frozenset(range(6, 12))}


async def test_validate_commit(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    assert groups.validate_commit(GROUP, "", -1) is None
    a = Client(groups, ("t",), "a")
    await settle([a])
    assert groups.validate_commit(GROUP, "a", a.epoch) is None
    assert groups.validate_commit(GROUP, "a", a.epoch - 1) == "stale_member_epoch"
    assert groups.validate_commit(GROUP, "zz", a.epoch) == "unknown_member_id"
    assert groups.validate_commit(GROUP, "", -1) == "unknown_member_id"
    await a.leave()
    assert groups.validate_commit(GROUP, "", -1) is None


async def test_delete_and_list(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a = Client(groups, ("t",), "a")
    await settle([a])
    assert await groups.delete(GROUP) == "non_empty_group"
    assert await groups.delete("other") == "group_id_not_found"
    await a.leave()
    coord.classic.groups.add(GROUP)  # a classic group took the empty id over
    assert groups.list() == []
    assert await groups.delete(GROUP) is None
    assert b"c/g" not in coord.log.state


async def test_unchanged_heartbeats_write_nothing(coord: FakeCoordinator) -> None:
    groups = new_groups(coord)
    a = Client(groups, ("t",), "a")
    await settle([a])
    writes = coord.log.writes
    for _ in range(5):
        resp = await a.beat()
        assert resp.assignment is None and resp.heartbeat_interval_ms == 500
    assert coord.log.writes == writes


def test_stored_form_is_pinned() -> None:
    """The value under `c/<group_id>`: changing it needs a new format version."""
    t = uuid.UUID(int=7)
    g = Group("g", 3, 3, "uniform", {"t": (t, 4)})
    g.add(Member("m1", None, "r1", "cid", "", ("t",), None, None, 30000, 3, 2,
                 MemberState.UNREVOKED, {t: frozenset({0, 1})}, {t: frozenset({3})}))
    g.target["m1"] = {t: frozenset({0, 1, 2})}
    tid = '"00000000-0000-0000-0000-000000000007"'
    golden = (
        '{"assignment_epoch":3,"assignor":"uniform","epoch":3,"members":{"m1":{'
        f'"assigned":{{{tid}:[0,1]}},"assignor":null,"client_host":"","client_id":"cid",'
        '"epoch":3,"instance_id":null,"previous_epoch":2,"rack_id":"r1",'
        f'"rebalance_timeout_ms":30000,"regex":null,"revoking":{{{tid}:[3]}},'
        f'"state":"unrevoked_partitions","target":{{{tid}:[0,1,2]}},"topics":["t"]}}}},'
        f'"metadata":{{"t":[{tid},4]}},"v":1}}').encode()
    assert encode(g) == golden
    back = decode("g", golden, now_ms=5)
    assert encode(back) == golden
    assert back.owners == {(t, 0): "m1", (t, 1): "m1", (t, 3): "m1"}
    assert back.members["m1"].last_seen_ms == 5
