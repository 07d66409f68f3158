"""`tidelog topics` and `tidelog configs`: topic and config administration like
kafka-topics.sh and kafka-configs.sh, through the Kafka protocol.

Each command is a function taking a connected client and returning what to print, so the
command line stays a thin shell and the output format is tested in one place.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

from kio.schema.create_partitions.v3 import request as cp_req
from kio.schema.create_topics.v7 import request as ct_req
from kio.schema.delete_topics.v6 import request as dt_req
from kio.schema.describe_configs.v4 import request as dc_req
from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs.v1 import request as iac_req
from kio.schema.metadata.v12 import request as md_req
from kio.schema.types import TopicName
from kio.static.primitive import i8, i16, i32, i32Timedelta

from tidelog.tools.wire import KafkaWireClient

TOPIC, BROKER = 2, 4
SET, DELETE = 0, 1
TOPIC_CONFIG = 1
DYNAMIC_SOURCES = {1, 2, 3}  # topic, dynamic broker, dynamic broker default
SOURCE_NAMES = {1: "DYNAMIC_TOPIC_CONFIG", 2: "DYNAMIC_BROKER_CONFIG",
                3: "DYNAMIC_DEFAULT_BROKER_CONFIG", 4: "STATIC_BROKER_CONFIG",
                5: "DEFAULT_CONFIG"}
TIMEOUT = i32Timedelta.parse(timedelta(seconds=30))


class AdminError(Exception):
    """The broker refused a command: the Kafka error name and its message."""

    def __init__(self, code: ErrorCode, message: str | None) -> None:
        super().__init__(f"{code.name.upper()}: {message}" if message else code.name.upper())
        self.code = code


def _check(code: ErrorCode, message: str | None = None) -> None:
    if code != ErrorCode.none:
        raise AdminError(code, message)


# ---- topics -------------------------------------------------------------------------------


@dataclass(slots=True)
class TopicInfo:
    name: str
    topic_id: uuid.UUID | None
    partitions: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]]
    """(partition, leader, replicas, isr)."""
    internal: bool
    configs: dict[str, str]


def _metadata(client: KafkaWireClient, names: list[str] | None) -> Any:
    topics = None if names is None else tuple(
        md_req.MetadataRequestTopic(topic_id=None, name=TopicName(n)) for n in names)
    return client.request(md_req.MetadataRequest(
        topics=topics, allow_auto_topic_creation=False,
        include_topic_authorized_operations=False))


def list_topics(client: KafkaWireClient, include_internal: bool = True) -> list[str]:
    resp = _metadata(client, None)
    return sorted(t.name for t in resp.topics if include_internal or not t.is_internal)


def describe_topics(client: KafkaWireClient, names: list[str] | None) -> list[TopicInfo]:
    resp = _metadata(client, names)
    out = []
    for t in sorted(resp.topics, key=lambda t: t.name or ""):
        _check(t.error_code, f"topic {t.name!r}")
        parts = [(p.partition_index, p.leader_id, tuple(p.replica_nodes), tuple(p.isr_nodes))
                 for p in sorted(t.partitions, key=lambda p: p.partition_index)]
        entries = describe_configs(client, TOPIC, t.name)
        overrides = {n: v or "" for n, v, src, _ in entries if src == TOPIC_CONFIG}
        out.append(TopicInfo(t.name, t.topic_id, parts, t.is_internal, overrides))
    return out


def print_topics(out: TextIO, topics: list[TopicInfo]) -> None:
    """kafka-topics.sh --describe's layout."""
    for t in topics:
        configs = ",".join(f"{k}={v}" for k, v in sorted(t.configs.items()))
        print(f"Topic: {t.name}\tTopicId: {t.topic_id}\tPartitionCount: {len(t.partitions)}"
              f"\tReplicationFactor: {len(t.partitions[0][2]) if t.partitions else 0}"
              f"\tConfigs: {configs}", file=out)
        for index, leader, replicas, isr in t.partitions:
            print(f"\tTopic: {t.name}\tPartition: {index}\tLeader: {leader}\tReplicas: "
                  f"{','.join(map(str, replicas))}\tIsr: {','.join(map(str, isr))}", file=out)


def create_topic(client: KafkaWireClient, name: str, partitions: int = -1,
                 replication_factor: int = -1, configs: dict[str, str] | None = None,
                 validate_only: bool = False) -> None:
    resp = client.request(ct_req.CreateTopicsRequest(topics=(ct_req.CreatableTopic(
        name=TopicName(name), num_partitions=i32(partitions),
        replication_factor=i16(replication_factor), assignments=(),
        configs=tuple(ct_req.CreatableTopicConfig(name=k, value=v)
                      for k, v in (configs or {}).items())),),
        timeout=TIMEOUT, validate_only=validate_only))
    r = resp.topics[0]
    _check(r.error_code, r.error_message)


def delete_topic(client: KafkaWireClient, name: str) -> None:
    resp = client.request(dt_req.DeleteTopicsRequest(
        topics=(dt_req.DeleteTopicState(name=TopicName(name), topic_id=uuid.UUID(int=0)),),
        timeout=TIMEOUT))
    r = resp.responses[0]
    _check(r.error_code, r.error_message)


def add_partitions(client: KafkaWireClient, name: str, total: int,
                   validate_only: bool = False) -> None:
    resp = client.request(cp_req.CreatePartitionsRequest(topics=(cp_req.CreatePartitionsTopic(
        name=TopicName(name), count=i32(total), assignments=None),), timeout=TIMEOUT,
        validate_only=validate_only))
    r = resp.results[0]
    _check(r.error_code, r.error_message)


# ---- configs ------------------------------------------------------------------------------

Entry = tuple[str, str | None, int, list[tuple[str, str | None, int]]]
"""(name, value, source, synonyms as (name, value, source))."""


def describe_configs(client: KafkaWireClient, resource_type: int, name: str) -> list[Entry]:
    resp = client.request(dc_req.DescribeConfigsRequest(resources=(dc_req.DescribeConfigsResource(
        resource_type=i8(resource_type), resource_name=name, configuration_keys=None),),
        include_synonyms=True, include_documentation=False))
    r = resp.results[0]
    _check(r.error_code, r.error_message)
    return [(c.name, c.value, c.config_source, [(s.name, s.value, s.source)
                                                for s in c.synonyms]) for c in r.configs]


def print_configs(out: TextIO, what: str, entries: list[Entry], show_all: bool) -> None:
    """kafka-configs.sh --describe's layout: dynamic configs, or every one with --all."""
    print(f"{'All' if show_all else 'Dynamic'} configs for {what} are:", file=out)
    for name, value, source, synonyms in entries:
        if not show_all and source not in DYNAMIC_SOURCES:
            continue
        syn = ", ".join(f"{SOURCE_NAMES.get(s, 'UNKNOWN')}:{n}={v}" for n, v, s in synonyms)
        print(f"  {name}={value} sensitive={'true' if value is None else 'false'} "
              f"synonyms={{{syn}}}", file=out)


def parse_config_pairs(text: str) -> dict[str, str]:
    """`k=v,k2=[a,b]` as kafka-configs.sh reads --add-config (brackets hold list values)."""
    out: dict[str, str] = {}
    depth, token = 0, ""
    pieces = []
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            pieces.append(token)
            token = ""
        else:
            token += ch
    pieces.append(token)
    for piece in pieces:
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        if not sep:
            raise ValueError(f"config {piece!r} is not key=value")
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            value = value[1:-1]
        out[key.strip()] = value
    return out


def alter_configs(client: KafkaWireClient, resource_type: int, name: str,
                  add: dict[str, str], delete: list[str], validate_only: bool = False) -> None:
    ops = [iac_req.AlterableConfig(name=k, config_operation=i8(SET), value=v)
           for k, v in add.items()]
    ops += [iac_req.AlterableConfig(name=k, config_operation=i8(DELETE), value=None)
            for k in delete]
    resp = client.request(iac_req.IncrementalAlterConfigsRequest(resources=(
        iac_req.AlterConfigsResource(resource_type=i8(resource_type), resource_name=name,
                                     configs=tuple(ops)),), validate_only=validate_only))
    r = resp.responses[0]
    _check(r.error_code, r.error_message)
