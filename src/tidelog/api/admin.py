"""CreateTopics and DeleteTopics.

Replication factor is accepted and reported as 1: durability comes from the WAL and
object storage, not from copies on brokers, so any requested factor is satisfied. Topic
configs are validated like AlterConfigs (INVALID_CONFIG) and returned in v5+ responses.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tidelog.api import broker_configs
from tidelog.api.acl_model import CLUSTER_NAME, Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.partition.topic_config import describe_topic
from tidelog.partition.topics import Topic, TopicError
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
CREATE_TOPICS, DELETE_TOPICS = 19, 20


def _configs(mod: Any, ctx: Context, topic: Topic) -> tuple[Any, ...]:
    return tuple(make(mod.CreatableTopicConfigs, name=d.name, value=d.value,
                      read_only=d.read_only, config_source=int(d.source),
                      is_sensitive=d.sensitive)
                 for d in describe_topic(topic.configs, broker_configs.layers(ctx.topics)))


async def handle_create_topics(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(CREATE_TOPICS, header.api_version)
    results = []
    seen: set[str] = set()
    cluster_create = ctx.allowed(header, Operation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME)
    for t in req.topics:
        code, msg, topic_id, nparts, configs = NONE, None, None, t.num_partitions, None
        try:
            if t.name in seen:
                raise TopicError("invalid_request", f"topic {t.name!r} listed twice")
            seen.add(t.name)
            if not cluster_create and not ctx.allowed(header, Operation.CREATE,
                                                      ResourceType.TOPIC, t.name):
                raise TopicError("topic_authorization_failed",
                                 f"CREATE on topic {t.name!r} is not allowed")
            if t.assignments:
                nparts = len(t.assignments)
            elif nparts == -1:
                nparts = ctx.config.num_partitions
            if t.replication_factor == 0 or t.replication_factor < -1:
                raise TopicError("invalid_replication_factor",
                                 f"replication factor {t.replication_factor} is invalid")
            if len({c.name for c in t.configs}) != len(t.configs):
                raise TopicError("invalid_config", "a config is given twice")
            topic = await ctx.topics.create(
                t.name, nparts, {c.name: c.value for c in t.configs if c.value is not None},
                validate_only=req.validate_only)
            topic_id = topic.topic_id
            if header.api_version >= 5:
                configs = _configs(mod, ctx, topic)
        except TopicError as exc:
            code, msg = error(exc.code), str(exc)
            log.info("CreateTopics %s: %s", t.name, exc)
        results.append(make(
            mod.CreatableTopicResult, name=t.name, topic_id=topic_id, error_code=code,
            error_message=msg, topic_config_error_code=NONE,
            num_partitions=nparts if code == NONE else -1,
            replication_factor=1 if code == NONE else -1, configs=configs))
    return make(mod.CreateTopicsResponse, throttle_time=timedelta(0), topics=tuple(results))


async def handle_delete_topics(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DELETE_TOPICS, header.api_version)
    if hasattr(req, "topic_names"):
        wanted = [(name, None) for name in req.topic_names]
    else:
        wanted = [(t.name, t.topic_id) for t in req.topics]
    results = []
    for name, topic_id in wanted:
        code, msg = NONE, None
        if name is None and topic_id is not None:
            topic = ctx.topics.by_id.get(topic_id)
            name = topic.name if topic else None
        try:
            if name is None:
                raise TopicError("unknown_topic_id", f"no topic has id {topic_id}")
            if not ctx.allowed(header, Operation.DELETE, ResourceType.TOPIC, name):
                raise TopicError("topic_authorization_failed",
                                 f"DELETE on topic {name!r} is not allowed")
            deleted = await ctx.topics.delete(name)
            topic_id = deleted.topic_id
        except TopicError as exc:
            code, msg = error(exc.code), str(exc)
        results.append(make(mod.DeletableTopicResult, name=name, topic_id=topic_id,
                            error_code=code, error_message=msg))
    return make(mod.DeleteTopicsResponse, throttle_time=timedelta(0), responses=tuple(results))


APIS = [
    Api(CREATE_TOPICS, 2, 7, handle_create_topics),
    Api(DELETE_TOPICS, 1, 6, handle_delete_topics),
]
