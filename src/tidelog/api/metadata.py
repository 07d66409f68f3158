"""Metadata and DescribeCluster: the live brokers with their racks (each at its address
for the listener the request came in on, as Kafka does), the controller, and each
partition's leader (its stream's owner) and leader epoch (the stream's epoch)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tidelog.api.acl_model import CLUSTER_NAME, Operation, ResourceType
from tidelog.api.base import (
    NO_OPERATIONS,
    NONE,
    Api,
    Context,
    error,
    make,
    response_module,
)
from tidelog.api.zone_routing import stand_in, stand_in_brokers
from tidelog.partition.topics import Topic, TopicError
from tidelog.protocol.codec import RequestHeader

METADATA, DESCRIBE_CLUSTER = 3, 60


def _topic_entry(mod: Any, ctx: Context, topic: Topic, live: dict[int, str | None],
                 ops: int = NO_OPERATIONS, zone: tuple[str, list[int]] | None = None) -> Any:
    """With `zone` (the client's zone and its brokers: zone routing), a partition owned
    in another zone is led, for this client, by its broker there (docs/design/0003)."""
    parts = []
    for i in range(topic.count):
        node, epoch = ctx.topics.leader(topic, i)
        if zone is not None and node in live and live[node] != zone[0]:
            node = stand_in(zone[1], topic.streams[i])
        if node in live:
            parts.append(make(mod.MetadataResponsePartition, error_code=NONE,
                              partition_index=i, leader_id=node, leader_epoch=epoch,
                              replica_nodes=(node,), isr_nodes=(node,), offline_replicas=()))
        else:  # placed on a broker that is down, or not opened yet: clients retry
            parts.append(make(mod.MetadataResponsePartition,
                              error_code=error("leader_not_available"), partition_index=i,
                              leader_id=-1, leader_epoch=-1, replica_nodes=(),
                              isr_nodes=(), offline_replicas=()))
    return make(mod.MetadataResponseTopic, error_code=NONE, name=topic.name,
                topic_id=topic.topic_id, is_internal=topic.internal, partitions=tuple(parts),
                topic_authorized_operations=ops)


def _error_topic(mod: Any, name: str | None, code: str) -> Any:
    return make(mod.MetadataResponseTopic, error_code=error(code), name=name,
                topic_id=None, is_internal=False, partitions=(),
                topic_authorized_operations=NO_OPERATIONS)


async def handle_metadata(ctx: Context, header: RequestHeader, req: Any) -> Any:
    """Topics the client may not DESCRIBE are left out of an all-topics answer and refused
    by name; a topic is auto-created only for a client that may CREATE it."""
    mod = response_module(METADATA, header.api_version)
    live_brokers = ctx.live_brokers()
    brokers = tuple(make(mod.MetadataResponseBroker, node_id=b.node_id, host=host, port=port,
                         rack=b.rack)
                    for b in live_brokers for host, port in (b.endpoint(header.listener),))
    live = {b.node_id: b.rack for b in live_brokers}
    routed = stand_in_brokers(ctx, header)
    zone = (header.zone, routed) if routed and header.zone else None
    with_ops = getattr(req, "include_topic_authorized_operations", False)

    def entry(topic: Topic) -> Any:
        ops = (ctx.operations(header, ResourceType.TOPIC, topic.name) if with_ops
               else NO_OPERATIONS)
        return _topic_entry(mod, ctx, topic, live, ops, None if topic.internal else zone)

    def may(op: Operation, name: str) -> bool:
        return ctx.allowed(header, op, ResourceType.TOPIC, name)

    entries = []
    # v0: an empty list means every topic; v1+: null means every topic.
    wanted = req.topics
    if wanted is None or (header.api_version == 0 and not wanted):
        entries = [entry(t) for t in ctx.topics.topics.values()
                   if may(Operation.DESCRIBE, t.name)]
    else:
        allow_create = getattr(req, "allow_auto_topic_creation", True)
        for t in wanted:
            name = t.name
            if name is None:
                topic = ctx.topics.by_id.get(t.topic_id)
                if topic is None or not may(Operation.DESCRIBE, topic.name):
                    entries.append(_error_topic(mod, None, "unknown_topic_id"))
                else:
                    entries.append(entry(topic))
                continue
            if not may(Operation.DESCRIBE, name):
                entries.append(_error_topic(mod, name, "topic_authorization_failed"))
                continue
            topic = ctx.topics.get(name)
            if (topic is None and allow_create and ctx.config.auto_create_topics
                    and (ctx.allowed(header, Operation.CREATE, ResourceType.CLUSTER,
                                     CLUSTER_NAME) or may(Operation.CREATE, name))):
                try:
                    topic = await ctx.topics.create(name, ctx.config.num_partitions)
                except TopicError as exc:
                    if exc.code != "topic_already_exists":
                        entries.append(_error_topic(mod, name, exc.code))
                        continue
                    topic = ctx.topics.get(name)
            entries.append(entry(topic) if topic else
                           _error_topic(mod, name, "unknown_topic_or_partition"))
    cluster_ops = (ctx.operations(header, ResourceType.CLUSTER, CLUSTER_NAME)
                   if getattr(req, "include_cluster_authorized_operations", False)
                   else NO_OPERATIONS)
    return make(mod.MetadataResponse, throttle_time=timedelta(0), brokers=brokers,
                cluster_id=ctx.config.cluster_id, controller_id=ctx.controller_id(),
                topics=tuple(entries), cluster_authorized_operations=cluster_ops)


async def handle_describe_cluster(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_CLUSTER, header.api_version)
    return make(mod.DescribeClusterResponse, throttle_time=timedelta(0), error_code=NONE,
                error_message=None, endpoint_type=1, cluster_id=ctx.config.cluster_id,
                controller_id=ctx.controller_id(),
                brokers=tuple(make(mod.DescribeClusterBroker, broker_id=b.node_id, host=host,
                                   port=port, rack=b.rack, is_fenced=False)
                              for b in ctx.live_brokers()
                              for host, port in (b.endpoint(header.listener),)),
                cluster_authorized_operations=(
                    ctx.operations(header, ResourceType.CLUSTER, CLUSTER_NAME)
                    if req.include_cluster_authorized_operations else NO_OPERATIONS))


APIS = [
    Api(METADATA, 0, 12, handle_metadata),
    Api(DESCRIBE_CLUSTER, 0, 1, handle_describe_cluster),
]
