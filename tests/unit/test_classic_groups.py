"""The classic group state machine (`ClassicGroups`) on a fake clock, with a fake state log
that records what would be durable: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from tidelog.coordinator.classic import EMPTY_GROUP_TTL_MS, ClassicGroups
from tidelog.coordinator.classic_state import (
    Event,
    Group,
    GroupState,
    IllegalTransition,
    JoinRequest,
    JoinResult,
    Member,
    SyncResult,
    next_state,
)
from tidelog.coordinator.coordinator import CoordinatorConfig, GroupCoordinator

SESSION, REBALANCE = 10_000, 30_000
RANGE = (("range", b"r"),)


@dataclass
class Clock:
    ms: int = 1_000_000

    def __call__(self) -> float:
        return self.ms / 1000


@dataclass
class FakeLog:
    state: dict[bytes, bytes] = field(default_factory=dict)
    writes: list[list[tuple[bytes, bytes | None]]] = field(default_factory=list)

    async def write(self, entries: Sequence[tuple[bytes, bytes | None]]) -> None:
        await asyncio.sleep(0)  # a real write yields
        self.writes.append(list(entries))
        for key, value in entries:
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value


class Env:
    def __init__(self, delay_ms: int = 0, log: FakeLog | None = None) -> None:
        self.clock = Clock()
        self.log = log or FakeLog()
        cfg = CoordinatorConfig(min_session_timeout_ms=1000, initial_rebalance_delay_ms=delay_ms)
        self.coord = GroupCoordinator(cast(Any, None), cfg, clock=self.clock)
        self.coord.log = cast(Any, self.log)
        self.classic: ClassicGroups = self.coord.classic

    def group(self, group_id: str = "g") -> Group:
        return self.classic._groups[group_id]

    def state(self, group_id: str = "g") -> GroupState:
        return self.group(group_id).state

    async def tick(self, ms: int) -> None:
        self.clock.ms += ms
        await self.classic.tick(self.clock.ms)
        await settle()

    async def join(self, member_id: str = "", client: str = "c", *, group: str = "g",
                   instance: str | None = None, protocols: tuple[tuple[str, bytes], ...] = RANGE,
                   session: int = SESSION, v4: bool = True, v9: bool = True,
                   ptype: str = "consumer") -> asyncio.Task[JoinResult]:
        """Start a JoinGroup (a long poll) and let it run as far as it can."""
        task = asyncio.create_task(self.classic.join(JoinRequest(
            group, member_id, instance, client, "/127.0.0.1", session, REBALANCE, ptype,
            protocols, require_known_member_id=v4, can_skip_assignment=v9)))
        await settle()
        return task

    async def new_member(self, client: str = "c", **kw: Any) -> asyncio.Task[JoinResult]:
        """The v4+ dance: MEMBER_ID_REQUIRED, then the join with the given id."""
        first = await (await self.join("", client, **kw))
        assert first.error == "member_id_required"
        assert first.member_id.startswith(f"{client}-")
        return await self.join(first.member_id, client, **kw)

    async def sync(self, member_id: str, generation: int, assignments: dict[str, bytes] | None
                   = None, group: str = "g", instance: str | None = None
                   ) -> asyncio.Task[SyncResult]:
        task = asyncio.create_task(self.classic.sync(
            group, generation, member_id, instance, "consumer", None, assignments or {}))
        await settle()
        return task


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def stable_pair(env: Env) -> tuple[JoinResult, JoinResult]:
    """Members a (leader) and b in Stable generation 2, assigned b"A" and b"B"."""
    a = await (await env.new_member("a"))
    assert (a.generation, a.leader) == (1, a.member_id)
    sa = await env.sync(a.member_id, 1, {a.member_id: b"A1"})
    assert (await sa).assignment == b"A1"
    tb = await env.new_member("b")
    assert env.state() is GroupState.PREPARING_REBALANCE and not tb.done()
    assert env.classic.heartbeat("g", a.member_id, None, 1) == "rebalance_in_progress"
    a2 = await (await env.join(a.member_id, "a"))
    b2 = await tb
    assert a2.generation == b2.generation == 2
    assert a2.leader == b2.leader == a.member_id
    assert [m[0] for m in a2.members] == [a.member_id, b2.member_id]
    assert b2.members == ()
    sb = await env.sync(b2.member_id, 2)
    assert not sb.done()  # a follower waits for the leader's assignment
    sa = await env.sync(a.member_id, 2, {a.member_id: b"A", b2.member_id: b"B"})
    assert (await sa).assignment == b"A" and (await sb).assignment == b"B"
    assert env.state() is GroupState.STABLE
    return a2, b2


def test_transition_table() -> None:
    assert next_state(GroupState.STABLE, Event.REBALANCE) is GroupState.PREPARING_REBALANCE
    assert next_state(GroupState.PREPARING_REBALANCE, Event.EMPTIED) is GroupState.EMPTY
    for state, event in [(GroupState.STABLE, Event.ASSIGNED), (GroupState.EMPTY, Event.JOINED),
                         (GroupState.DEAD, Event.REBALANCE),
                         (GroupState.PREPARING_REBALANCE, Event.REBALANCE)]:
        with pytest.raises(IllegalTransition):
            next_state(state, event)


async def test_join_sync_round_member_id_required() -> None:
    env = Env()
    first = await (await env.join("", "client-1"))
    assert first.error == "member_id_required" and first.generation == -1
    assert env.state() is GroupState.EMPTY and not env.classic.has("g")
    res = await (await env.join(first.member_id, "client-1"))
    assert res.error is None
    assert (res.generation, res.leader, res.protocol_name) == (1, first.member_id, "range")
    assert res.members == ((first.member_id, None, b"r"),)
    assert env.state() is GroupState.COMPLETING_REBALANCE and env.classic.has("g")
    sync = await (await env.sync(first.member_id, 1, {first.member_id: b"assigned"}))
    assert sync == SyncResult(None, b"assigned", "consumer", "range")
    assert env.state() is GroupState.STABLE
    assert b"g/g" in env.log.state  # the generation's assignment is durable
    assert env.classic.heartbeat("g", first.member_id, None, 1) is None
    assert env.classic.list() == [("g", "Stable", "consumer")]


async def test_v3_join_needs_no_member_id_round() -> None:
    env = Env()
    res = await (await env.join("", "old", v4=False))
    assert res.error is None and res.generation == 1 and res.member_id.startswith("old-")


async def test_leader_election_and_generation_bump() -> None:
    env = Env()
    a, b = await stable_pair(env)
    assert env.classic.heartbeat("g", b.member_id, None, 1) == "illegal_generation"
    # the leader leaves: b leads the next generation, alone
    assert await env.classic.leave("g", [(a.member_id, None)]) == [None]
    b3 = await (await env.join(b.member_id, "b"))
    assert (b3.generation, b3.leader) == (3, b.member_id)
    assert [m[0] for m in b3.members] == [b.member_id]


async def test_protocol_selection_by_votes() -> None:
    env = Env()
    both = (("roundrobin", b"1"), ("range", b"2"))
    a = await (await env.new_member("a", protocols=both))
    await env.sync(a.member_id, 1)
    tb = await env.new_member("b", protocols=(("range", b"3"), ("roundrobin", b"4")))
    tc = await env.new_member("c", protocols=(("range", b"5"), ("roundrobin", b"6")))
    a2 = await (await env.join(a.member_id, "a", protocols=both))
    assert a2.protocol_name == "range"  # two votes to one
    assert [meta for _, _, meta in a2.members] == [b"2", b"3", b"5"]
    assert (await tb).protocol_name == (await tc).protocol_name == "range"
    bad = await (await env.join("", "d", protocols=(("sticky", b""),)))
    assert bad.error == "inconsistent_group_protocol"
    other = await (await env.join("", "e", ptype="connect"))
    assert other.error == "inconsistent_group_protocol"


async def test_initial_rebalance_delay_grows_while_members_arrive() -> None:
    env = Env(delay_ms=3000)
    ta = await env.new_member("a")
    await env.tick(2000)
    assert not ta.done()
    tb = await env.new_member("b")
    await env.tick(1000)  # first delay over, but b arrived: wait another delay
    assert not ta.done()
    await env.tick(3000)
    a, b = await ta, await tb
    assert a.generation == b.generation == 1 and len(a.members) == 2


async def test_session_expiry_removes_member_and_rebalances() -> None:
    env = Env()
    a, b = await stable_pair(env)
    for _ in range(3):
        await env.tick(SESSION // 3)
        assert env.classic.heartbeat("g", a.member_id, None, 2) is None  # b stays silent
    await env.tick(SESSION // 3)
    assert env.state() is GroupState.PREPARING_REBALANCE
    assert b.member_id not in env.group().members
    assert env.classic.heartbeat("g", a.member_id, None, 2) == "rebalance_in_progress"
    assert env.classic.heartbeat("g", b.member_id, None, 2) == "unknown_member_id"
    a3 = await (await env.join(a.member_id, "a"))
    assert a3.generation == 3 and [m[0] for m in a3.members] == [a.member_id]


async def test_delete_and_describe_see_an_ended_session_without_waiting_for_a_tick() -> None:
    """An admin deleting a group right at the session timeout finds it empty, as with
    Kafka's exact timers (librdkafka's 0081_admin deletes 6 s after closing a static
    member whose session is 6 s)."""
    env = Env()
    a = await (await env.new_member("a"))
    assert (await (await env.sync(a.member_id, a.generation, {a.member_id: b"A"}))).error is None
    env.clock.ms += SESSION - 1
    assert await env.classic.delete("g") == "non_empty_group"
    env.clock.ms += 1  # no tick: the timer has not run yet
    assert env.classic.describe("g").state == GroupState.EMPTY.value  # type: ignore[union-attr]
    assert await env.classic.delete("g") is None


async def test_rebalance_timeout_removes_members_that_do_not_rejoin() -> None:
    env = Env()
    a, b = await stable_pair(env)
    tc = await env.new_member("c", session=60_000)
    ta = await env.join(a.member_id, "a", session=60_000)
    for _ in range(6):  # b heartbeats but never rejoins
        await env.tick(REBALANCE // 6)
        if not ta.done():
            env.classic.heartbeat("g", b.member_id, None, 2)
    a3, c3 = await ta, await tc
    assert a3.generation == c3.generation == 3
    assert {m[0] for m in a3.members} == {a.member_id, c3.member_id}
    assert env.classic.heartbeat("g", b.member_id, None, 2) == "unknown_member_id"


async def test_pending_sync_expiry() -> None:
    env = Env()
    a, b = await stable_pair(env)
    assert await env.classic.leave("g", [("nobody", None)]) == ["unknown_member_id"]
    tc = await env.new_member("c", session=60_000)
    ta = await env.join(a.member_id, "a", session=60_000)
    tb = await env.join(b.member_id, "b", session=60_000)
    a3, c3 = await ta, await tc
    assert a3.generation == c3.generation == (await tb).generation == 3
    sa = await env.sync(a.member_id, 3, {})
    sc = await env.sync(c3.member_id, 3, {})
    assert (await sa).error is None and (await sc).error is None  # b never syncs
    await env.tick(REBALANCE)
    assert env.state() is GroupState.PREPARING_REBALANCE
    assert b.member_id not in env.group().members


async def test_static_member_rejoins_without_rebalance() -> None:
    env = Env()
    ta = await env.join("", "a", instance="ia")  # static members skip MEMBER_ID_REQUIRED
    a = await ta
    assert a.member_id.startswith("ia-") and a.generation == 1
    await env.sync(a.member_id, 1, {a.member_id: b"all"})
    tb = await env.new_member("b")
    a2 = await (await env.join(a.member_id, "a", instance="ia"))
    b2 = await tb
    sb = await env.sync(b2.member_id, 2)
    await env.sync(a.member_id, 2, {a.member_id: b"A", b2.member_id: b"B"}, instance="ia")
    assert (await sb).assignment == b"B"
    writes = len(env.log.writes)

    # a restarts: a new process joins with the instance id and no member id
    back = await (await env.join("", "a", instance="ia"))
    assert back.error is None and back.member_id != a.member_id
    assert back.generation == 2 and env.state() is GroupState.STABLE
    assert back.leader == back.member_id and back.skip_assignment  # v9: leads, skips
    assert [m[0] for m in back.members] == [back.member_id, b2.member_id]
    assert len(env.log.writes) == writes + 1  # the new member id is durable
    assert env.classic.heartbeat("g", a.member_id, "ia", 2) == "fenced_instance_id"
    assert env.classic.heartbeat("g", b2.member_id, None, 2) is None  # no rebalance for b
    got = await (await env.sync(back.member_id, 2, {}, instance="ia"))
    assert got.assignment == b"A"

    # an older client (JoinGroup < v9) is shown the previous leader so it does not assign
    old = await (await env.join("", "a", instance="ia", v9=False))
    assert old.leader == back.member_id and old.members == () and not old.skip_assignment
    assert a2.generation == 2


async def test_static_member_with_new_protocol_rebalances() -> None:
    env = Env()
    both = (("range", b""), ("roundrobin", b""))
    a = await (await env.join("", "a", instance="ia", protocols=both))
    await env.sync(a.member_id, 1, {})
    res = await (await env.join("", "a", instance="ia", protocols=(both[1], both[0])))
    assert res.generation == 2 and res.protocol_name == "roundrobin"


async def test_static_member_replaced_while_waiting_is_fenced() -> None:
    env = Env()
    b = await (await env.new_member("b"))
    await env.sync(b.member_id, 1, {})
    ta = await env.join("", "a", instance="ia")
    await env.join(b.member_id, "b")
    a = await ta
    s_old = await env.sync(a.member_id, 2, {}, instance="ia")
    assert not s_old.done()  # a follower waiting for the leader
    # a second process with the same instance id takes over while the first one waits
    t_new = await env.join("", "a2", instance="ia")
    assert (await s_old).error == "fenced_instance_id"
    assert env.state() is GroupState.PREPARING_REBALANCE
    assert env.classic.heartbeat("g", a.member_id, "ia", 2) == "fenced_instance_id"
    b3 = await (await env.join(b.member_id, "b"))
    new = await t_new
    assert new.generation == b3.generation == 3 and new.member_id != a.member_id
    assert {m[0] for m in b3.members} == {b.member_id, new.member_id}


async def test_fencing_errors() -> None:
    env = Env()
    assert (await (await env.join("x"))).error == "unknown_member_id"  # unknown group
    assert (await (await env.join("", session=500))).error == "invalid_session_timeout"
    assert (await (await env.join("", group=""))).error == "invalid_group_id"
    assert (await env.sync("x", 1)).result().error == "unknown_member_id"
    assert env.classic.heartbeat("nope", "x", None, 1) == "unknown_member_id"
    a, b = await stable_pair(env)
    assert (await (await env.join("stranger"))).error == "unknown_member_id"
    assert (await (await env.sync(a.member_id, 1))).error == "illegal_generation"
    assert env.classic.heartbeat("g", "stranger", None, 2) == "unknown_member_id"
    assert env.classic.heartbeat("g", a.member_id, "some-instance", 2) == "unknown_member_id"
    assert (await env.classic.sync("g", 2, a.member_id, None, "connect", None, {})).error \
        == "inconsistent_group_protocol"
    tc = await env.new_member("c")
    assert (await (await env.sync(b.member_id, 2))).error == "rebalance_in_progress"
    assert not tc.done()
    assert await env.classic.leave("g", [("", "unknown-instance")]) == ["unknown_member_id"]
    assert await env.classic.leave("nope", [("m", None)]) == ["unknown_member_id"]


async def test_cooperative_double_rejoin() -> None:
    """Cooperative assignors: after the first rebalance a member revokes what moves and
    rejoins with new metadata (its owned partitions); that must start another rebalance
    in which the revoked partitions go to their new owner."""
    env = Env()
    coop = (("cooperative-sticky", b"owned=0-5"),)
    a = await (await env.new_member("a", protocols=coop))
    await env.sync(a.member_id, 1, {a.member_id: b"0-5"})
    tb = await env.new_member("b", protocols=(("cooperative-sticky", b"owned="),))
    a2 = await (await env.join(a.member_id, "a", protocols=coop))
    b2 = await tb
    # the leader withholds 3-5 (still owned by a): b gets nothing this generation
    sb = await env.sync(b2.member_id, 2)
    await env.sync(a.member_id, 2, {a.member_id: b"0-2", b2.member_id: b""})
    assert (await sb).assignment == b"" and env.state() is GroupState.STABLE
    # b rejoins with unchanged metadata: a follower with nothing new gets generation 2 back
    same = await (await env.join(b2.member_id, "b", protocols=(("cooperative-sticky",
                                                                   b"owned="),)))
    assert same.generation == 2 and env.state() is GroupState.STABLE
    # a revoked 3-5 and rejoins: second rebalance
    ta = await env.join(a.member_id, "a", protocols=(("cooperative-sticky", b"owned=0-2"),))
    assert env.state() is GroupState.PREPARING_REBALANCE
    assert env.classic.heartbeat("g", b2.member_id, None, 2) == "rebalance_in_progress"
    tb = await env.join(b2.member_id, "b", protocols=(("cooperative-sticky", b"owned="),))
    a3, b3 = await ta, await tb
    assert a3.generation == b3.generation == 3
    assert dict((m, meta) for m, _, meta in a3.members)[a.member_id] == b"owned=0-2"
    sb = await env.sync(b2.member_id, 3)
    await env.sync(a.member_id, 3, {a.member_id: b"0-2", b2.member_id: b"3-5"})
    assert (await sb).assignment == b"3-5"
    assert a2.generation == 2


async def test_leave_until_empty_and_delete() -> None:
    env = Env()
    a, b = await stable_pair(env)
    assert await env.classic.delete("g") == "non_empty_group"
    assert await env.classic.leave("g", [(a.member_id, None), (b.member_id, None)]) == [None,
                                                                                         None]
    assert env.state() is GroupState.EMPTY and env.group().generation == 3
    assert not env.classic.has("g") and env.classic.list() == [("g", "Empty", "consumer")]
    assert b'"members":[]' in env.log.state[b"g/g"]
    assert env.classic.validate_commit("g", "", -1, None) is None
    assert await env.classic.delete("g") is None
    assert b"g/g" not in env.log.state and env.log.writes[-1] == [(b"g/g", None)]
    assert await env.classic.delete("g") == "group_id_not_found"


async def test_leave_by_instance_id_and_pending_member() -> None:
    env = Env()
    a = await (await env.join("", "a", instance="ia"))
    await env.sync(a.member_id, 1, {})
    pending = await (await env.join("", "b"))
    assert pending.error == "member_id_required"
    assert await env.classic.leave("g", [(pending.member_id, None)]) == [None]
    assert await env.classic.leave("g", [("wrong", "ia")]) == ["fenced_instance_id"]
    assert await env.classic.leave("g", [("", "ia")]) == [None]
    assert env.state() is GroupState.EMPTY


async def test_validate_commit() -> None:
    env = Env()
    v = env.classic.validate_commit
    assert v("new", "", -1, None) is None  # standalone commit, no group
    assert v("new", "m", 3, None) == "illegal_generation"
    a, b = await stable_pair(env)
    assert v("g", a.member_id, 2, None) is None
    assert v("g", a.member_id, 1, None) == "illegal_generation"
    assert v("g", "stranger", 2, None) == "unknown_member_id"
    assert v("g", "", -1, None) == "unknown_member_id"  # standalone on an active group
    assert v("g", a.member_id, 2, "ia") == "unknown_member_id"
    tc = await env.new_member("c")
    assert v("g", a.member_id, 2, None) is None  # PreparingRebalance: accepted, as Kafka
    await env.join(a.member_id, "a")
    await env.join(b.member_id, "b")
    assert (await tc).generation == 3
    assert v("g", a.member_id, 3, None) == "rebalance_in_progress"  # CompletingRebalance


def consumer_subscription(*topics: str) -> bytes:
    out = struct.pack(">hi", 1, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    return out + struct.pack(">i", -1)  # user data (null), then owned partitions would follow


async def test_subscribed_topics() -> None:
    env = Env()
    a = await (await env.new_member("a", protocols=(("range", consumer_subscription("x", "y")),)))
    await env.sync(a.member_id, 1)
    tb = await env.new_member("b", protocols=(("range", consumer_subscription("z")),))
    await env.join(a.member_id, "a", protocols=(("range", consumer_subscription("x", "y")),))
    await tb
    assert env.classic.subscribed_topics("g") == {"x", "y", "z"}
    assert env.classic.subscribed_topics("none") is None
    c = await (await env.new_member("c", group="g2", protocols=(("range", b"\x00"),)))
    assert c.generation == 1 and env.classic.subscribed_topics("g2") is None
    d = await (await env.new_member("d", group="g3", ptype="connect"))
    assert d.generation == 1 and env.classic.subscribed_topics("g3") is None


async def test_restore_from_state_log() -> None:
    env = Env()
    a = await (await env.join("", "a", instance="ia"))
    await env.sync(a.member_id, 1, {a.member_id: b"all"}, instance="ia")
    tb = await env.new_member("b")
    await env.join(a.member_id, "a", instance="ia")
    b = await tb
    await env.sync(b.member_id, 2)
    await env.sync(a.member_id, 2, {a.member_id: b"A", b.member_id: b"B"}, instance="ia")
    assert env.state() is GroupState.STABLE
    empty = await (await env.new_member("e", group="gone"))
    await env.classic.leave("gone", [(empty.member_id, None)])

    after = Env(log=FakeLog(state=dict(env.log.state)))  # a restarted broker
    after.classic.restore(after.log.state)
    g = after.group()
    assert (g.state, g.generation, g.leader) == (GroupState.STABLE, 2, a.member_id)
    assert {m: x.assignment for m, x in g.members.items()} == {a.member_id: b"A",
                                                              b.member_id: b"B"}
    assert after.state("gone") is GroupState.EMPTY and after.group("gone").generation == 2
    # b carries on with its generation; a restarts and is recognised by its instance id
    assert after.classic.heartbeat("g", b.member_id, None, 2) is None
    assert after.classic.validate_commit("g", b.member_id, 2, None) is None
    back = await (await after.join("", "a", instance="ia"))
    assert back.generation == 2 and after.state() is GroupState.STABLE
    assert (await (await after.sync(back.member_id, 2, instance="ia"))).assignment == b"A"
    # b goes silent: its session expires and the group rebalances
    for _ in range(4):
        await after.tick(SESSION // 3)
        after.classic.heartbeat("g", back.member_id, "ia", 2)
    assert after.state() is GroupState.PREPARING_REBALANCE
    assert b.member_id not in after.group().members


async def test_empty_group_without_offsets_is_forgotten() -> None:
    env = Env()
    a = await (await env.new_member("a"))
    await env.classic.leave("g", [(a.member_id, None)])
    await env.tick(1)
    assert env.state() is GroupState.EMPTY
    await env.tick(EMPTY_GROUP_TTL_MS)
    assert "g" not in env.classic._groups and b"g/g" not in env.log.state


def test_snapshot_format() -> None:
    """Pinned: restarts read what older brokers wrote."""
    g = Group("g", GroupState.STABLE, generation=7, protocol_type="consumer",
              protocol_name="range", leader="m1")
    g.members["m1"] = Member("m1", "i1", "c1", "/10.0.0.1", 10000, 30000,
                             (("range", b"\x00\x01"), ("rr", b"")), assignment=b"\xff")
    assert g.encode() == (
        b'{"v":1,"protocol_type":"consumer","generation":7,"protocol":"range","leader":"m1",'
        b'"members":[{"id":"m1","instance":"i1","client_id":"c1","client_host":"/10.0.0.1",'
        b'"session_ms":10000,"rebalance_ms":30000,"protocols":[["range","AAE="],["rr",""]],'
        b'"assignment":"/w=="}]}')


async def test_unload_answers_parked_joins_not_coordinator_and_forgets_the_group() -> None:
    """The group's state-log partition moved to another broker: a JoinGroup parked here
    (waiting out the initial rebalance delay) is told NOT_COORDINATOR, so the client
    finds the new coordinator; other groups are untouched."""
    env = Env(delay_ms=3000)
    parked = await env.new_member("a")
    other = await env.new_member("b", group="h")
    assert not parked.done() and not other.done()
    assert env.classic.unload(lambda gid: gid == "g") == 1
    await settle()
    assert parked.done() and parked.result().error == "not_coordinator"
    assert "g" not in env.classic._groups and not other.done()
    assert env.classic.unload(lambda gid: gid == "g") == 0
    await env.tick(3000)  # "h" carries on here
    assert (await other).error is None
