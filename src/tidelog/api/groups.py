"""Group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups,
DescribeGroups, DeleteGroups.

FindCoordinator names the owner of the id's partition of `__consumer_offsets` (groups) or
`__transaction_state` (transactional ids), Kafka's mapping; on one broker, itself. Every
other group request for a group coordinated elsewhere gets NOT_COORDINATOR (after the
authorization check, so an unauthorized client learns nothing), which makes the client
look the coordinator up again.
The classic protocol's logic lives in `coordinator.classic`; these handlers translate
between kio's messages (every version) and its calls. A group with committed offsets but
no classic metadata (assign + commit consumers, admin tools) is shown as Kafka shows it:
an Empty group with no protocol type.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.base import (
    NO_OPERATIONS,
    NONE,
    Api,
    Context,
    error,
    make,
    response_module,
)
from tidelog.coordinator.classic_state import GroupSummary, JoinRequest
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 10, 11, 12, 13, 14
DESCRIBE_GROUPS, LIST_GROUPS, DELETE_GROUPS = 15, 16, 42
KEY_TYPES = {0: "group", 1: "transaction"}
DENIED = "group_authorization_failed"
NOT_COORDINATOR = "not_coordinator"
ZERO = timedelta(0)


def _may(ctx: Context, header: RequestHeader, op: Operation, group_id: str) -> bool:
    return ctx.allowed(header, op, ResourceType.GROUP, group_id)


def _refused(ctx: Context, header: RequestHeader, op: Operation, group_id: str) -> str | None:
    """Why this broker will not serve a request for the group (None: it will)."""
    if not _may(ctx, header, op, group_id):
        return DENIED
    if not ctx.coordinator.owns(group_id):
        return NOT_COORDINATOR
    return None


def _code(name: str | None) -> Any:
    return NONE if name is None else error(name)


def _ms(value: timedelta) -> int:
    return int(value / timedelta(milliseconds=1))


async def handle_find_coordinator(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(FIND_COORDINATOR, v)
    key_type = getattr(req, "key_type", 0)
    code, msg = NONE, None
    if key_type not in KEY_TYPES:
        code, msg = error("invalid_request"), f"unsupported key type {key_type}"

    logs = (ctx.coordinator.log if key_type == 0 else
            ctx.transactions.log if ctx.transactions is not None else None)
    if ctx.cluster is not None and code == NONE and logs is not None \
            and ctx.topics.get(logs.topic) is None:
        try:  # the first coordinator lookup of a cluster creates the topic (as Kafka)
            await logs.ensure()
        except Exception as exc:
            log.warning("creating %s failed: %r", logs.topic, exc)

    def answer(key: str) -> tuple[Any, str | None, int, str, int]:
        c, m = code, msg
        if c == NONE:
            rtype = ResourceType.GROUP if key_type == 0 else ResourceType.TRANSACTIONAL_ID
            if not ctx.allowed(header, Operation.DESCRIBE, rtype, key):
                c = error(DENIED if key_type == 0 else "transactional_id_authorization_failed")
                m = f"DESCRIBE on {key!r} is not allowed"
        if c != NONE:
            return c, m, -1, "", -1
        if ctx.cluster is None:  # one broker coordinates everything
            return (c, m, ctx.broker.node_id, *ctx.broker.endpoint(header.listener))
        if logs is None:
            return error("coordinator_not_available"), "no coordinator", -1, "", -1
        topic = ctx.topics.get(logs.topic)
        node = -1 if topic is None else ctx.topics.leader(topic, logs.partition_for(key))[0]
        b = ctx.broker_by_id(node)
        if b is None:
            return (error("coordinator_not_available"),
                    f"the coordinator of {key!r} is not available", -1, "", -1)
        return (c, m, b.node_id, *b.endpoint(header.listener))

    if v >= 4:
        coordinators = []
        for key in req.coordinator_keys:
            c, m, node, host, port = answer(key)
            coordinators.append(make(mod.Coordinator, key=key, node_id=node, host=host,
                                     port=port, error_code=c, error_message=m))
        return make(mod.FindCoordinatorResponse, throttle_time=ZERO,
                    coordinators=tuple(coordinators))
    c, m, node, host, port = answer(req.key)
    return make(mod.FindCoordinatorResponse, throttle_time=ZERO, error_code=c,
                error_message=m, node_id=node, host=host, port=port)


async def handle_join_group(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(JOIN_GROUP, v)
    refused = _refused(ctx, header, Operation.READ, req.group_id)
    if refused is not None:
        return make(mod.JoinGroupResponse, throttle_time=ZERO, error_code=error(refused),
                    generation_id=-1, protocol_type=None,
                    protocol_name=None if v >= 7 else "", leader="", skip_assignment=False,
                    member_id=req.member_id, members=())
    session = _ms(req.session_timeout)
    result = await ctx.coordinator.classic.join(JoinRequest(
        group_id=req.group_id, member_id=req.member_id,
        instance_id=getattr(req, "group_instance_id", None),
        client_id=header.client_id or "", client_host=header.client_host,
        session_timeout_ms=session,
        rebalance_timeout_ms=_ms(req.rebalance_timeout) if v >= 1 else session,
        protocol_type=req.protocol_type,
        protocols=tuple((p.name, p.metadata) for p in req.protocols),
        require_known_member_id=v >= 4, can_skip_assignment=v >= 9))
    protocol_name = result.protocol_name
    if protocol_name is None and v < 7:
        protocol_name = ""  # not nullable before v7
    members = tuple(make(mod.JoinGroupResponseMember, member_id=mid, group_instance_id=iid,
                         metadata=meta) for mid, iid, meta in result.members)
    return make(mod.JoinGroupResponse, throttle_time=ZERO, error_code=_code(result.error),
                generation_id=result.generation, protocol_type=result.protocol_type,
                protocol_name=protocol_name, leader=result.leader,
                skip_assignment=result.skip_assignment, member_id=result.member_id,
                members=members)


async def handle_sync_group(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(SYNC_GROUP, header.api_version)
    refused = _refused(ctx, header, Operation.READ, req.group_id)
    if refused is not None:
        return make(mod.SyncGroupResponse, throttle_time=ZERO, error_code=error(refused),
                    protocol_type=None, protocol_name=None, assignment=b"")
    result = await ctx.coordinator.classic.sync(
        req.group_id, req.generation_id, req.member_id,
        getattr(req, "group_instance_id", None), getattr(req, "protocol_type", None),
        getattr(req, "protocol_name", None),
        {a.member_id: a.assignment for a in req.assignments})
    return make(mod.SyncGroupResponse, throttle_time=ZERO, error_code=_code(result.error),
                protocol_type=result.protocol_type, protocol_name=result.protocol_name,
                assignment=result.assignment)


async def handle_heartbeat(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(HEARTBEAT, header.api_version)
    refused = _refused(ctx, header, Operation.READ, req.group_id)
    if refused is not None:
        return make(mod.HeartbeatResponse, throttle_time=ZERO, error_code=error(refused))
    err = ctx.coordinator.classic.heartbeat(req.group_id, req.member_id,
                                            getattr(req, "group_instance_id", None),
                                            req.generation_id)
    return make(mod.HeartbeatResponse, throttle_time=ZERO, error_code=_code(err))


async def handle_leave_group(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(LEAVE_GROUP, v)
    refused = _refused(ctx, header, Operation.READ, req.group_id)
    if refused is not None:
        return make(mod.LeaveGroupResponse, throttle_time=ZERO, error_code=error(refused),
                    members=())
    if v < 3:
        leaving: list[tuple[str, str | None]] = [(req.member_id, None)]
    else:
        leaving = [(m.member_id, m.group_instance_id) for m in req.members]
    errors = await ctx.coordinator.classic.leave(req.group_id, leaving)
    if v < 3:  # one member: its error is the response's
        return make(mod.LeaveGroupResponse, throttle_time=ZERO, error_code=_code(errors[0]))
    members = tuple(make(mod.MemberResponse, member_id=mid, group_instance_id=iid,
                         error_code=_code(err))
                    for (mid, iid), err in zip(leaving, errors, strict=True))
    return make(mod.LeaveGroupResponse, throttle_time=ZERO, error_code=NONE, members=members)


def _all_groups(ctx: Context) -> list[tuple[str, str, str, str]]:
    """(group id, state, protocol type, group type) of every group this broker coordinates
    (Kafka's ListGroups asks every broker and merges: a group is listed by its owner only)."""
    coord = ctx.coordinator
    out = [(g, state, ptype, "classic") for g, state, ptype in coord.classic.list()]
    out += [(g, state, ptype, "consumer") for g, state, ptype in coord.consumer.list()]
    known = {g for g, *_ in out}
    out += [(g, "Empty", "", "classic") for g in sorted(coord.offsets.groups() - known)]
    return [row for row in out if coord.owns(row[0])]


async def handle_list_groups(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(LIST_GROUPS, header.api_version)
    states = {s.lower() for s in getattr(req, "states_filter", ())}
    types = {t.lower() for t in getattr(req, "types_filter", ())}
    groups = tuple(
        make(mod.ListedGroup, group_id=g, protocol_type=ptype, group_state=state,
             group_type=gtype)
        for g, state, ptype, gtype in _all_groups(ctx)
        if (not states or state.lower() in states) and (not types or gtype in types)
        and _may(ctx, header, Operation.DESCRIBE, g))
    return make(mod.ListGroupsResponse, throttle_time=ZERO, error_code=NONE, groups=groups)


def _described(mod: Any, version: int, group_id: str, summary: GroupSummary | None,
               why: str = "not found", ops: int = NO_OPERATIONS) -> Any:
    if why in (DENIED, NOT_COORDINATOR):
        return make(mod.DescribedGroup, error_code=error(why),
                    error_message=(f"DESCRIBE on group {group_id} is not allowed"
                                   if why == DENIED else
                                   f"group {group_id} is not coordinated by this broker"),
                    group_id=group_id, group_state="", protocol_type="", protocol_data="",
                    members=(), authorized_operations=NO_OPERATIONS)
    if summary is None:
        if version >= 6:  # KIP-1043; older versions describe an unknown group as Dead
            return make(mod.DescribedGroup, error_code=error("group_id_not_found"),
                        error_message=f"group {group_id} {why}",
                        group_id=group_id, group_state="Dead", protocol_type="",
                        protocol_data="", members=(), authorized_operations=NO_OPERATIONS)
        summary = GroupSummary(group_id, "Dead", "", "", ())
    members = tuple(make(mod.DescribedGroupMember, member_id=m.member_id,
                         group_instance_id=m.instance_id, client_id=m.client_id,
                         client_host=m.client_host, member_metadata=m.metadata,
                         member_assignment=m.assignment) for m in summary.members)
    return make(mod.DescribedGroup, error_code=NONE, error_message=None, group_id=group_id,
                group_state=summary.state, protocol_type=summary.protocol_type,
                protocol_data=summary.protocol, members=members,
                authorized_operations=ops)


async def handle_describe_groups(ctx: Context, header: RequestHeader, req: Any) -> Any:
    v = header.api_version
    mod = response_module(DESCRIBE_GROUPS, v)
    coord = ctx.coordinator
    out = []
    with_ops = getattr(req, "include_authorized_operations", False)
    for group_id in req.groups:
        refused = _refused(ctx, header, Operation.DESCRIBE, group_id)
        if refused is not None:
            out.append(_described(mod, v, group_id, None, refused))
            continue
        ops = (ctx.operations(header, ResourceType.GROUP, group_id) if with_ops
               else NO_OPERATIONS)
        summary = coord.classic.describe(group_id)
        if coord.consumer.has(group_id):
            out.append(_described(mod, v, group_id, None, "is not a classic group"))
            continue
        if summary is None and group_id in coord.offsets.groups():
            summary = GroupSummary(group_id, "Empty", "", "", ())
        out.append(_described(mod, v, group_id, summary, ops=ops))
    return make(mod.DescribeGroupsResponse, throttle_time=ZERO, groups=tuple(out))


async def _delete_group(ctx: Context, group_id: str) -> str | None:
    coord = ctx.coordinator
    err: str | None = await coord.consumer.delete(group_id)  # a KIP-848 group, if any
    if err == "group_id_not_found":
        err = await coord.classic.delete(group_id)
    if err == "group_id_not_found" and group_id in coord.offsets.groups():
        err = None  # a group with offsets only
    if err is None:
        await coord.offsets.delete_group(group_id)
    return err


async def handle_delete_groups(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DELETE_GROUPS, header.api_version)
    results = []
    for group_id in req.groups_names:
        err = (_refused(ctx, header, Operation.DELETE, group_id)
               or await _delete_group(ctx, group_id))
        if err is not None:
            log.info("DeleteGroups %s: %s", group_id, err)
        results.append(make(mod.DeletableGroupResult, group_id=group_id, error_code=_code(err)))
    return make(mod.DeleteGroupsResponse, throttle_time=ZERO, results=tuple(results))


APIS = [
    Api(FIND_COORDINATOR, 0, 6, handle_find_coordinator),
    Api(JOIN_GROUP, 0, 9, handle_join_group),
    Api(HEARTBEAT, 0, 4, handle_heartbeat),
    Api(LEAVE_GROUP, 0, 5, handle_leave_group),
    Api(SYNC_GROUP, 0, 5, handle_sync_group),
    Api(DESCRIBE_GROUPS, 0, 6, handle_describe_groups),
    Api(LIST_GROUPS, 0, 5, handle_list_groups),
    Api(DELETE_GROUPS, 0, 2, handle_delete_groups),
]
