"""CreateTopics and DeleteTopics.

Replication factor is accepted and reported as 1: durability comes from the WAL and
object storage, not from copies on brokers, so any requested factor is satisfied.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.partition.topics import TopicError
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
CREATE_TOPICS, DELETE_TOPICS = 19, 20


async def handle_create_topics(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(CREATE_TOPICS, header.api_version)
    results = []
    seen: set[str] = set()
    for t in req.topics:
        code, msg, topic_id, nparts = NONE, None, None, t.num_partitions
        try:
            if t.name in seen:
                raise TopicError("invalid_request", f"topic {t.name!r} listed twice")
            seen.add(t.name)
            if t.assignments:
                nparts = len(t.assignments)
            elif nparts == -1:
                nparts = ctx.config.num_partitions
            if t.replication_factor == 0 or t.replication_factor < -1:
                raise TopicError("invalid_replication_factor",
                                 f"replication factor {t.replication_factor} is invalid")
            configs = {c.name: c.value for c in t.configs if c.value is not None}
            topic = await ctx.topics.create(t.name, nparts, configs,
                                            validate_only=req.validate_only)
            topic_id = topic.topic_id
        except TopicError as exc:
            code, msg = error(exc.code), str(exc)
            log.info("CreateTopics %s: %s", t.name, exc)
        results.append(make(
            mod.CreatableTopicResult, name=t.name, topic_id=topic_id, error_code=code,
            error_message=msg, topic_config_error_code=NONE,
            num_partitions=nparts if code == NONE else -1,
            replication_factor=1 if code == NONE else -1, configs=None))
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
