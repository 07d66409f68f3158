"""The group API handlers at every version they serve: a member's whole life (find the
coordinator, join, sync, heartbeat, describe, list, leave, delete) per version, each
response encoded by kio, so no version is left with a missing or ill-typed field; and
NOT_COORDINATOR for every group request that reaches a broker not coordinating the group."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from tests.unit.test_classic_groups import Clock, FakeLog
from tests.unit.test_consumer_groups import FakeTopics
from tidelog.api import consumer_groups, groups, offsets
from tidelog.api.authorizer import Authorizer
from tidelog.api.base import BrokerInfo, Context
from tidelog.coordinator.coordinator import CoordinatorConfig, GroupCoordinator
from tidelog.protocol.codec import RequestHeader, encode_response

BY_KEY = {a.key: a for a in groups.APIS + offsets.APIS + consumer_groups.APIS}


class OwnedLog(FakeLog):
    """A single broker's state log: every group is coordinated here."""

    def owns(self, group_id: str) -> bool:
        return True


class Topics(FakeTopics):
    """What the coordinator (KIP-848 subscriptions) and OffsetCommit ask of the topics."""

    def exists(self, name: str, partition: int) -> bool:
        t = self.topics.get(name)
        return t is not None and partition in t.partitions


def ctx() -> Context:
    topics = Topics()
    topics.add("t", 2)
    coord = GroupCoordinator(cast(Any, topics), CoordinatorConfig(initial_rebalance_delay_ms=0),
                             clock=Clock())
    coord.log = cast(Any, OwnedLog())
    return Context(BrokerInfo(7, "broker.example", 9093), cast(Any, topics), coord)


async def call(c: Context, api_key: int, version: int, **fields: Any) -> Any:
    """Build the request of that version from the fields it has, run the handler, and
    encode the response (the test fails if kio cannot)."""
    api = BY_KEY[api_key]
    assert api.min_version <= version <= api.max_version
    mod = load_payload_module(api_key, version, EntityType.request)
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("Request")
               and getattr(getattr(mod, n), "__type__", None) is EntityType.request)
    names = {f for f in cls.__dataclass_fields__}
    req = cls(**{k: (v(mod) if callable(v) else v) for k, v in fields.items() if k in names})
    resp = await api.handler(c, RequestHeader(api_key, version, 1, "client"), req)
    assert encode_response(api_key, version, 1, resp)
    return resp


def protocols(mod: Any) -> tuple[Any, ...]:
    return (mod.JoinGroupRequestProtocol(name="range", metadata=b"\x00\x00\x00\x00\x00\x00"),)


def assignment(member_id: str) -> Any:
    return lambda mod: (mod.SyncGroupRequestAssignment(member_id=member_id, assignment=b"a"),)


@pytest.mark.parametrize("v", range(0, 10))
async def test_member_life_at_every_version(v: int) -> None:
    c = ctx()
    sv = min(v, 5)  # SyncGroup, LeaveGroup, DescribeGroups, ListGroups versions to pair
    g = f"group-v{v}"
    fc = await call(c, groups.FIND_COORDINATOR, min(v, 6), key=g, key_type=0,
                    coordinator_keys=(g,))
    if v >= 4:
        assert (fc.coordinators[0].node_id, fc.coordinators[0].port) == (7, 9093)
    else:
        assert (fc.node_id, fc.host, fc.error_code) == (7, "broker.example", ErrorCode.none)
    join = dict(group_id=g, session_timeout=timedelta(seconds=10),
                rebalance_timeout=timedelta(seconds=30), member_id="", group_instance_id=None,
                protocol_type="consumer", protocols=protocols, reason=None)
    resp = await call(c, groups.JOIN_GROUP, v, **join)
    if v >= 4:
        assert resp.error_code == ErrorCode.member_id_required
        resp = await call(c, groups.JOIN_GROUP, v, **{**join, "member_id": resp.member_id})
    assert resp.error_code == ErrorCode.none and resp.generation_id == 1
    assert resp.protocol_name == "range" and resp.leader == resp.member_id
    member = resp.member_id
    common = dict(group_id=g, generation_id=1, member_id=member, group_instance_id=None)
    sync = await call(c, groups.SYNC_GROUP, sv, **common, protocol_type="consumer",
                      protocol_name="range", assignments=assignment(member))
    assert sync.error_code == ErrorCode.none and sync.assignment == b"a"
    hb = await call(c, groups.HEARTBEAT, min(v, 4), **common)
    assert hb.error_code == ErrorCode.none
    desc = await call(c, groups.DESCRIBE_GROUPS, min(v, 6), groups=(g, "unknown"),
                      include_authorized_operations=False)
    assert desc.groups[0].group_state == "Stable"
    assert desc.groups[0].members[0].member_assignment == b"a"
    assert desc.groups[1].error_code == (ErrorCode.group_id_not_found if v >= 6
                                         else ErrorCode.none)
    listed = await call(c, groups.LIST_GROUPS, sv, states_filter=("stable",),
                        types_filter=("classic",))
    assert [x.group_id for x in listed.groups] == [g]
    delete = await call(c, groups.DELETE_GROUPS, min(v, 2), groups_names=(g, "unknown"))
    assert [r.error_code for r in delete.results] == [ErrorCode.non_empty_group,
                                                      ErrorCode.group_id_not_found]
    leave = await call(c, groups.LEAVE_GROUP, sv, group_id=g, member_id=member,
                       members=lambda mod: (mod.MemberIdentity(member_id=member),))
    assert leave.error_code == ErrorCode.none
    delete = await call(c, groups.DELETE_GROUPS, min(v, 2), groups_names=(g,))
    assert delete.results[0].error_code == ErrorCode.none


async def test_find_coordinator_batched_and_bad_key_type() -> None:
    c = ctx()
    resp = await call(c, groups.FIND_COORDINATOR, 6, key_type=1, coordinator_keys=("t1", "t2"))
    assert [(x.key, x.node_id, x.error_code) for x in resp.coordinators] == [
        ("t1", 7, ErrorCode.none), ("t2", 7, ErrorCode.none)]
    resp = await call(c, groups.FIND_COORDINATOR, 3, key="s", key_type=2)
    assert resp.error_code == ErrorCode.invalid_request


async def test_leave_group_v0_reports_the_member_error() -> None:
    c = ctx()
    resp = await call(c, groups.LEAVE_GROUP, 0, group_id="nope", member_id="m")
    assert resp.error_code == ErrorCode.unknown_member_id
    resp = await call(c, groups.LEAVE_GROUP, 5, group_id="nope",
                      members=lambda mod: (mod.MemberIdentity(member_id="m"),))
    assert resp.error_code == ErrorCode.none
    assert resp.members[0].error_code == ErrorCode.unknown_member_id


JOIN = dict(group_id="g", session_timeout=timedelta(seconds=10),
            rebalance_timeout=timedelta(seconds=30), member_id="m", group_instance_id=None,
            protocol_type="consumer", protocols=protocols, reason=None)
MEMBER = dict(group_id="g", generation_id=1, member_id="m", group_instance_id=None)
CONSUMER_HEARTBEAT = dict(group_id="g", member_id="", member_epoch=0, instance_id=None,
                          rack_id=None, rebalance_timeout=timedelta(seconds=30),
                          subscribed_topic_names=("t",), subscribed_topic_regex=None,
                          server_assignor=None, topic_partitions=())


def commit_t0(offset: int) -> Any:
    return lambda mod: (mod.OffsetCommitRequestTopic(name="t", partitions=(
        mod.OffsetCommitRequestPartition(partition_index=0, committed_offset=offset,
                                         committed_leader_epoch=-1,
                                         committed_metadata=None),)),)


async def test_every_group_request_for_a_group_coordinated_elsewhere_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = ctx()
    monkeypatch.setattr(c.coordinator, "owns", lambda group_id: False)
    nc = ErrorCode.not_coordinator
    assert (await call(c, groups.JOIN_GROUP, 9, **JOIN)).error_code == nc
    assert (await call(c, groups.JOIN_GROUP, 0, **JOIN)).error_code == nc
    assert (await call(c, groups.SYNC_GROUP, 5, **MEMBER, protocol_type="consumer",
                       protocol_name="range", assignments=assignment("m"))).error_code == nc
    assert (await call(c, groups.HEARTBEAT, 4, **MEMBER)).error_code == nc
    assert (await call(c, groups.LEAVE_GROUP, 0, group_id="g", member_id="m")).error_code == nc
    desc = await call(c, groups.DESCRIBE_GROUPS, 5, groups=("g",),
                      include_authorized_operations=False)
    assert desc.groups[0].error_code == nc
    deleted = await call(c, groups.DELETE_GROUPS, 2, groups_names=("g",))
    assert deleted.results[0].error_code == nc

    commit = await call(c, offsets.OFFSET_COMMIT, 9, group_id="g",
                        generation_id_or_member_epoch=-1, member_id="", group_instance_id=None,
                        topics=commit_t0(5))
    assert commit.topics[0].partitions[0].error_code == nc
    assert c.coordinator.offsets.fetch("g", "t", 0) is None  # nothing was committed here
    fetch = await call(c, offsets.OFFSET_FETCH, 7, group_id="g", topics=None,
                       require_stable=False)
    assert fetch.error_code == nc
    fetch = await call(c, offsets.OFFSET_FETCH, 1, group_id="g", topics=lambda mod: (
        mod.OffsetFetchRequestTopic(name="t", partition_indexes=(0,)),))
    assert fetch.topics[0].partitions[0].error_code == nc  # v1: no top-level error
    fetch = await call(c, offsets.OFFSET_FETCH, 9, require_stable=False, groups=lambda mod: (
        mod.OffsetFetchRequestGroup(group_id="g", member_id=None, member_epoch=-1,
                                    topics=None),))
    assert fetch.groups[0].error_code == nc
    gone = await call(c, offsets.OFFSET_DELETE, 0, group_id="g", topics=())
    assert gone.error_code == nc

    hb = await call(c, consumer_groups.CONSUMER_GROUP_HEARTBEAT, 0, **CONSUMER_HEARTBEAT)
    assert (hb.error_code, hb.member_epoch) == (nc, 0)
    cdesc = await call(c, consumer_groups.CONSUMER_GROUP_DESCRIBE, 0, group_ids=("g",),
                       include_authorized_operations=False)
    assert cdesc.groups[0].error_code == nc


async def test_unauthorized_beats_not_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in Kafka, a client that may not use the group learns nothing about it."""
    c = ctx()
    monkeypatch.setattr(c.coordinator, "owns", lambda group_id: False)
    c.authorizer = Authorizer(allow_if_no_acl=False)  # no binding: nothing is allowed
    denied = ErrorCode.group_authorization_failed
    assert (await call(c, groups.JOIN_GROUP, 9, **JOIN)).error_code == denied
    assert (await call(c, groups.HEARTBEAT, 4, **MEMBER)).error_code == denied
    hb = await call(c, consumer_groups.CONSUMER_GROUP_HEARTBEAT, 0, **CONSUMER_HEARTBEAT)
    assert hb.error_code == denied


async def test_the_coordinator_serves_its_own_groups_and_lists_only_those(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = ctx()
    mine = {"g", "c"}
    monkeypatch.setattr(c.coordinator, "owns", lambda group_id: group_id in mine)
    commit = await call(c, offsets.OFFSET_COMMIT, 9, group_id="g",
                        generation_id_or_member_epoch=-1, member_id="", group_instance_id=None,
                        topics=commit_t0(5))
    assert commit.topics[0].partitions[0].error_code == ErrorCode.none
    fetch = await call(c, offsets.OFFSET_FETCH, 9, require_stable=False, groups=lambda mod: (
        mod.OffsetFetchRequestGroup(group_id="g", member_id=None, member_epoch=-1,
                                    topics=None),
        mod.OffsetFetchRequestGroup(group_id="elsewhere", member_id=None, member_epoch=-1,
                                    topics=None)))
    assert [g.error_code for g in fetch.groups] == [ErrorCode.none, ErrorCode.not_coordinator]
    assert fetch.groups[0].topics[0].partitions[0].committed_offset == 5
    join = await call(c, groups.JOIN_GROUP, 9, **{**JOIN, "member_id": ""})
    assert join.error_code == ErrorCode.member_id_required  # served: the usual first answer
    hb = await call(c, consumer_groups.CONSUMER_GROUP_HEARTBEAT, 0,
                    **{**CONSUMER_HEARTBEAT, "group_id": "c"})
    assert hb.error_code == ErrorCode.none and hb.member_epoch == 1
    assert hb.member_id

    mine.remove("g")  # e.g. its partition of __consumer_offsets moved away
    listed = await call(c, groups.LIST_GROUPS, 5, states_filter=(), types_filter=())
    assert [x.group_id for x in listed.groups] == ["c"]
