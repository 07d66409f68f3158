"""The group API handlers at every version they serve: a member's whole life (find the
coordinator, join, sync, heartbeat, describe, list, leave, delete) per version, each
response encoded by kio, so no version is left with a missing or ill-typed field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from tests.unit.test_classic_groups import Clock, FakeLog
from tidelog.api import groups
from tidelog.api.base import BrokerInfo, Context
from tidelog.coordinator.coordinator import CoordinatorConfig, GroupCoordinator
from tidelog.protocol.codec import RequestHeader, encode_response

BY_KEY = {a.key: a for a in groups.APIS}


def ctx() -> Context:
    coord = GroupCoordinator(cast(Any, None), CoordinatorConfig(initial_rebalance_delay_ms=0),
                             clock=Clock())
    coord.log = cast(Any, FakeLog())
    return Context(BrokerInfo(7, "broker.example", 9093), cast(Any, None), coord)


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
