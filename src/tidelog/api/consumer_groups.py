"""ConsumerGroupHeartbeat and ConsumerGroupDescribe: the KIP-848 consumer protocol.

The state machine lives in `coordinator.consumer`; this module only translates. A group
id held by an active classic group is refused as Kafka does (GROUP_ID_NOT_FOUND: "not a
consumer group"), since one id cannot run both protocols at once. A group coordinated by
another broker is answered NOT_COORDINATOR (after the authorization check).
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
from tidelog.coordinator.consumer import HeartbeatRequest, partitions_of
from tidelog.coordinator.consumer_state import Partitions
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
CONSUMER_GROUP_HEARTBEAT, CONSUMER_GROUP_DESCRIBE = 68, 69
MEMBER_TYPE_CONSUMER = 1


def _not_consumer_group(group_id: str) -> str:
    return f"Group {group_id} is not a consumer group."


def _elsewhere(group_id: str) -> str:
    return f"Group {group_id} is not coordinated by this broker."


async def handle_heartbeat(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(CONSUMER_GROUP_HEARTBEAT, header.api_version)

    def fail(code: str, message: str) -> Any:
        return make(mod.ConsumerGroupHeartbeatResponse, throttle_time=timedelta(0),
                    error_code=error(code), error_message=message, member_id=None,
                    member_epoch=0, heartbeat_interval=timedelta(0), assignment=None)

    coord = ctx.coordinator
    if not ctx.allowed(header, Operation.READ, ResourceType.GROUP, req.group_id):
        return fail("group_authorization_failed", f"READ on group {req.group_id} is not "
                    "allowed")
    if not coord.owns(req.group_id):
        return fail("not_coordinator", _elsewhere(req.group_id))
    if coord.classic.has(req.group_id):
        return fail("group_id_not_found", _not_consumer_group(req.group_id))
    if header.api_version >= 1 and not req.member_id:
        # From v1 the client makes its own member id (KIP-1082).
        return fail("invalid_request", "MemberId can't be empty.")
    owned = None
    if req.topic_partitions is not None:
        owned = partitions_of((tp.topic_id, tp.partitions) for tp in req.topic_partitions
                              if tp.topic_id is not None)
    resp = await coord.consumer.heartbeat(HeartbeatRequest(
        group_id=req.group_id, member_id=req.member_id, member_epoch=req.member_epoch,
        instance_id=req.instance_id, rack_id=req.rack_id,
        rebalance_timeout_ms=int(req.rebalance_timeout.total_seconds() * 1000),
        subscribed_topic_names=(tuple(req.subscribed_topic_names)
                                if req.subscribed_topic_names is not None else None),
        subscribed_topic_regex=getattr(req, "subscribed_topic_regex", None),
        server_assignor=req.server_assignor, owned=owned,
        client_id=header.client_id or "", client_host=header.client_host))
    if resp.error is not None:
        return fail(resp.error, resp.message or "")
    assignment = None
    if resp.assignment is not None:
        assignment = make(mod.Assignment, topic_partitions=tuple(
            make(mod.TopicPartitions, topic_id=tid, partitions=tuple(sorted(ps)))
            for tid, ps in sorted(resp.assignment.items())))
    return make(mod.ConsumerGroupHeartbeatResponse, throttle_time=timedelta(0),
                error_code=NONE, error_message=None, member_id=resp.member_id,
                member_epoch=resp.member_epoch,
                heartbeat_interval=timedelta(milliseconds=resp.heartbeat_interval_ms),
                assignment=assignment)


def _assignment(ctx: Context, mod: Any, parts: Partitions) -> Any:
    tps = []
    for tid, ps in sorted(parts.items()):
        topic = ctx.topics.by_id.get(tid)
        if topic is None:
            continue  # deleted since: nothing to name
        tps.append(make(mod.TopicPartitions, topic_id=tid, topic_name=topic.name,
                        partitions=tuple(sorted(ps))))
    return make(mod.Assignment, topic_partitions=tuple(tps))


async def handle_describe(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(CONSUMER_GROUP_DESCRIBE, header.api_version)
    out = []
    for group_id in req.group_ids:
        g = ctx.coordinator.consumer.get(group_id)
        code, message = NONE, None
        if not group_id:
            code, message = error("invalid_group_id"), "Group id can't be empty."
        elif not ctx.allowed(header, Operation.DESCRIBE, ResourceType.GROUP, group_id):
            code = error("group_authorization_failed")
            message = f"DESCRIBE on group {group_id} is not allowed"
        elif not ctx.coordinator.owns(group_id):
            code, message = error("not_coordinator"), _elsewhere(group_id)
        elif ctx.coordinator.classic.has(group_id):
            code, message = error("group_id_not_found"), _not_consumer_group(group_id)
        elif g is None:
            code, message = error("group_id_not_found"), f"Group {group_id} not found."
        if g is None or code != NONE:
            out.append(make(mod.DescribedGroup, error_code=code, error_message=message,
                            group_id=group_id, group_state="Dead", group_epoch=-1,
                            assignment_epoch=-1, assignor_name="", members=(),
                            authorized_operations=NO_OPERATIONS))
            continue
        members = tuple(make(
            mod.Member, member_id=m.member_id, instance_id=m.instance_id, rack_id=m.rack_id,
            member_epoch=m.epoch, client_id=m.client_id, client_host=m.client_host,
            subscribed_topic_names=m.topics, subscribed_topic_regex=m.regex,
            assignment=_assignment(ctx, mod, m.assigned),
            target_assignment=_assignment(ctx, mod, g.target.get(m.member_id, {})),
            member_type=MEMBER_TYPE_CONSUMER) for m in g.members.values())
        out.append(make(mod.DescribedGroup, error_code=NONE, error_message=None,
                        group_id=group_id, group_state=g.state, group_epoch=g.epoch,
                        assignment_epoch=g.assignment_epoch, assignor_name=g.assignor,
                        members=members, authorized_operations=(
                            ctx.operations(header, ResourceType.GROUP, group_id)
                            if req.include_authorized_operations else NO_OPERATIONS)))
    return make(mod.ConsumerGroupDescribeResponse, throttle_time=timedelta(0),
                groups=tuple(out))


APIS = [
    Api(CONSUMER_GROUP_HEARTBEAT, 0, 1, handle_heartbeat),
    Api(CONSUMER_GROUP_DESCRIBE, 0, 1, handle_describe),
]
