"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics and brokers.

Topic configs are Kafka's (names, defaults, validation: `partition.topic_config`). A
broker's dynamic configs are the keys that serve topic defaults (`log.retention.ms`, ...),
per broker (resource name = its id) or cluster-wide (resource name ""); other broker keys
are read-only and refused with INVALID_REQUEST, as Kafka refuses static configs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from tidelog.api import broker_configs
from tidelog.api.acl_model import CLUSTER_NAME, Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.partition.topic_config import (
    KEYS,
    SYNONYMS,
    ConfigType,
    Described,
    describe_topic,
)
from tidelog.partition.topics import DEFAULT_SCOPE, TopicError, validate_name
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
DESCRIBE_CONFIGS, ALTER_CONFIGS, INCREMENTAL_ALTER_CONFIGS = 32, 33, 44
TOPIC, BROKER = 2, 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3


def _topic(ctx: Context, name: str) -> Any:
    validate_name(name)
    topic = ctx.topics.get(name)
    if topic is None:
        raise TopicError("unknown_topic_or_partition", f"topic {name!r} does not exist")
    return topic


def _check(ctx: Context, header: RequestHeader, op: Operation, rtype: int, name: str) -> None:
    """DESCRIBE_CONFIGS/ALTER_CONFIGS on the topic, or on the cluster for a broker."""
    if rtype == TOPIC and not ctx.allowed(header, op, ResourceType.TOPIC, name):
        raise TopicError("topic_authorization_failed", f"{op.name} on topic {name!r} "
                         "is not allowed")
    if rtype == BROKER and not ctx.allowed(header, op, ResourceType.CLUSTER, CLUSTER_NAME):
        raise TopicError("cluster_authorization_failed", f"{op.name} on the cluster "
                         "is not allowed")


def _described(ctx: Context, rtype: int, name: str) -> list[Described]:
    if rtype == TOPIC:
        return describe_topic(_topic(ctx, name).configs, broker_configs.layers(ctx.topics))
    if rtype == BROKER:
        scope = ctx.topics.dynamic_scope(name)
        layers = broker_configs.layers(ctx.topics)
        if scope == DEFAULT_SCOPE:
            return broker_configs.describe_default(layers)
        return broker_configs.describe_all(layers)
    raise TopicError("invalid_request", f"unsupported resource type {rtype}")


async def handle_describe_configs(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_CONFIGS, header.api_version)
    synonyms = getattr(req, "include_synonyms", False)
    docs = getattr(req, "include_documentation", False)
    results = []
    for r in req.resources:
        code, msg, entries = NONE, None, []
        try:
            _check(ctx, header, Operation.DESCRIBE_CONFIGS, r.resource_type, r.resource_name)
            wanted = None if r.configuration_keys is None else set(r.configuration_keys)
            for d in _described(ctx, r.resource_type, r.resource_name):
                if wanted is not None and d.name not in wanted:
                    continue
                entries.append(make(
                    mod.DescribeConfigsResourceResult, name=d.name, value=d.value,
                    read_only=d.read_only, config_source=int(d.source),
                    is_sensitive=d.sensitive, config_type=int(d.type),
                    documentation=d.doc if docs else None,
                    synonyms=tuple(make(mod.DescribeConfigsSynonym, name=n, value=v,
                                        source=int(s)) for n, v, s in d.synonyms)
                    if synonyms else ()))
        except TopicError as exc:
            code, msg, entries = error(exc.code), str(exc), []
        results.append(make(mod.DescribeConfigsResult, error_code=code, error_message=msg,
                            resource_type=r.resource_type, resource_name=r.resource_name,
                            configs=tuple(entries)))
    return make(mod.DescribeConfigsResponse, throttle_time=timedelta(0),
                results=tuple(results))


def _current(ctx: Context, rtype: int, name: str) -> dict[str, str]:
    """The overrides an alter starts from: the topic's, or the broker scope's dynamic
    configs."""
    if rtype == TOPIC:
        return dict(_topic(ctx, name).configs)
    if rtype == BROKER:
        return dict(ctx.topics.dynamic_configs[ctx.topics.dynamic_scope(name)])
    raise TopicError("invalid_request", f"unsupported resource type {rtype}")


async def _store(ctx: Context, rtype: int, name: str, configs: dict[str, str],
                 validate_only: bool) -> None:
    if rtype == TOPIC:
        await ctx.topics.alter_configs(name, configs, validate_only)
    else:
        await ctx.topics.alter_broker_configs(name, configs, validate_only)


async def _alter_each(ctx: Context, header: RequestHeader, resources: Any, validate_only: bool,
                      change: Callable[[int, str, Any], dict[str, str]]) -> list[
                          tuple[Any, Any, str | None]]:
    """(resource, error, message) per resource; a resource named twice is refused."""
    seen: dict[tuple[int, str], int] = {}
    for r in resources:
        seen[(r.resource_type, r.resource_name)] = seen.get(
            (r.resource_type, r.resource_name), 0) + 1
    out = []
    for r in resources:
        code, msg = NONE, None
        try:
            if seen[(r.resource_type, r.resource_name)] > 1:
                raise TopicError("invalid_request", "duplicate resource in the request")
            _check(ctx, header, Operation.ALTER_CONFIGS, r.resource_type, r.resource_name)
            new = change(r.resource_type, r.resource_name, r.configs)
            await _store(ctx, r.resource_type, r.resource_name, new, validate_only)
        except TopicError as exc:
            code, msg = error(exc.code), str(exc)
            log.info("alter configs %s %r refused: %s", r.resource_type, r.resource_name, exc)
        out.append((r, code, msg))
    return out


async def handle_alter_configs(ctx: Context, header: RequestHeader, req: Any) -> Any:
    """Legacy AlterConfigs: the given set replaces every override (null values ignored)."""
    mod = response_module(ALTER_CONFIGS, header.api_version)

    def replace(rtype: int, name: str, configs: Any) -> dict[str, str]:
        _current(ctx, rtype, name)  # the resource must exist
        return {c.name: c.value for c in configs if c.value is not None}

    done = await _alter_each(ctx, header, req.resources, req.validate_only, replace)
    return make(mod.AlterConfigsResponse, throttle_time=timedelta(0), responses=tuple(
        make(mod.AlterConfigsResourceResponse, error_code=code, error_message=msg,
             resource_type=r.resource_type, resource_name=r.resource_name)
        for r, code, msg in done))


def _type_of(rtype: int, name: str) -> ConfigType | None:
    if rtype == TOPIC:
        return KEYS[name].type if name in KEYS else None
    return SYNONYMS[name][1].type if name in SYNONYMS else None


def _list_default(rtype: int, name: str) -> str:
    if rtype == TOPIC:
        return KEYS[name].default
    return SYNONYMS[name][1].default or ""


def incremental(rtype: int, current: dict[str, str], ops: Any) -> dict[str, str]:
    """Apply SET / DELETE / APPEND / SUBTRACT to `current` (Kafka's rules: one operation
    per key, list operations only on LIST configs, starting from the default if unset)."""
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise TopicError("invalid_request", "duplicate config keys in one resource")
    new = dict(current)
    for op in ops:
        kind, name, value = op.config_operation, op.name, op.value
        if kind == SET:
            if value is None:
                raise TopicError("invalid_config", f"null value for config {name}")
            new[name] = value
        elif kind == DELETE:
            new.pop(name, None)
        elif kind in (APPEND, SUBTRACT):
            if _type_of(rtype, name) is not ConfigType.LIST:
                verb = "APPEND" if kind == APPEND else "SUBTRACT"
                raise TopicError("invalid_config",
                                 f"can't {verb} to key {name} because its type is not LIST")
            raw = new.get(name, _list_default(rtype, name))
            old = [x.strip() for x in raw.split(",") if x.strip()]
            given = [x.strip() for x in (value or "").split(",") if x.strip()]
            if kind == APPEND:
                merged = old + [x for x in given if x not in old]
            else:
                merged = [x for x in old if x not in given]
            new[name] = ",".join(merged)
        else:
            raise TopicError("invalid_request", f"unknown config operation {kind}")
    return new


async def handle_incremental_alter_configs(ctx: Context, header: RequestHeader,
                                           req: Any) -> Any:
    mod = response_module(INCREMENTAL_ALTER_CONFIGS, header.api_version)

    def apply(rtype: int, name: str, ops: Any) -> dict[str, str]:
        return incremental(rtype, _current(ctx, rtype, name), ops)

    done = await _alter_each(ctx, header, req.resources, req.validate_only, apply)
    return make(mod.IncrementalAlterConfigsResponse, throttle_time=timedelta(0),
                responses=tuple(
                    make(mod.AlterConfigsResourceResponse, error_code=code, error_message=msg,
                         resource_type=r.resource_type, resource_name=r.resource_name)
                    for r, code, msg in done))


APIS = [
    Api(DESCRIBE_CONFIGS, 1, 4, handle_describe_configs),
    Api(ALTER_CONFIGS, 0, 2, handle_alter_configs),
    Api(INCREMENTAL_ALTER_CONFIGS, 0, 1, handle_incremental_alter_configs),
]
