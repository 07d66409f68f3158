"""`tidelog groups list|describe`: consumer groups and their lag, like
kafka-consumer-groups.sh, through the Kafka protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TextIO

from kio.schema.consumer_group_describe.v0 import request as cgd_req
from kio.schema.consumer_protocol_assignment.v1.data import ConsumerProtocolAssignment
from kio.schema.describe_groups.v5 import request as dg_req
from kio.schema.errors import ErrorCode
from kio.schema.list_groups.v4 import request as lg_req
from kio.schema.list_offsets.v7 import request as lo_req
from kio.schema.offset_fetch.v8 import request as of_req
from kio.schema.types import BrokerId, GroupId, TopicName
from kio.serial import entity_reader
from kio.static.primitive import i8, i32, i64

from tidelog.tools.wire import KafkaWireClient

LATEST = -1


@dataclass(slots=True)
class Row:
    topic: str
    partition: int
    committed: int | None
    end: int
    member: str = "-"
    host: str = "-"
    client: str = "-"

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(self.end - self.committed, 0)


def list_groups(client: KafkaWireClient) -> list[tuple[str, str, str]]:
    resp = client.request(lg_req.ListGroupsRequest(states_filter=()))
    return [(g.group_id, g.group_state, g.protocol_type) for g in resp.groups]


def _classic_members(client: KafkaWireClient, group: str) -> tuple[str, dict[tuple[str, int],
                                                                            tuple[str, ...]]]:
    resp = client.request(dg_req.DescribeGroupsRequest(groups=(GroupId(group),),
                                                       include_authorized_operations=False))
    g = resp.groups[0]
    owners: dict[tuple[str, int], tuple[str, ...]] = {}
    for m in g.members:
        if not m.member_assignment:
            continue
        try:
            a, _ = entity_reader(ConsumerProtocolAssignment)(m.member_assignment, 2)
        except Exception:  # not a consumer-protocol assignment (e.g. Connect)
            continue
        for tp in a.assigned_partitions:
            for p in tp.partitions:
                owners[(tp.topic, p)] = (m.member_id, m.client_host, m.client_id)
    return g.group_state, owners


def _consumer_members(client: KafkaWireClient, group: str) -> tuple[str, dict[
        tuple[str, int], tuple[str, ...]]] | None:
    try:
        resp = client.request(cgd_req.ConsumerGroupDescribeRequest(
            group_ids=(GroupId(group),), include_authorized_operations=False))
    except ConnectionError:
        return None  # broker without KIP-848
    g = resp.groups[0]
    if g.error_code != ErrorCode.none:
        return None
    owners: dict[tuple[str, int], tuple[str, ...]] = {}
    for m in g.members:
        for tp in m.assignment.topic_partitions:
            for p in tp.partitions:
                owners[(tp.topic_name, p)] = (m.member_id, m.client_host, m.client_id)
    return g.group_state, owners


def describe(bootstrap: str, group: str) -> tuple[str, list[Row]]:
    with KafkaWireClient(bootstrap) as client:
        consumer = _consumer_members(client, group)
        state, owners = consumer if consumer else _classic_members(client, group)
        offsets = client.request(of_req.OffsetFetchRequest(
            groups=(of_req.OffsetFetchRequestGroup(group_id=GroupId(group), topics=None),),
            require_stable=False))
        committed: dict[tuple[str, int], int | None] = {}
        for t in offsets.groups[0].topics:
            for p in t.partitions:
                committed[(t.name, p.partition_index)] = (
                    p.committed_offset if p.committed_offset >= 0 else None)
        keys = sorted(set(committed) | set(owners))
        ends = _end_offsets(client, keys)
    rows = []
    for key in keys:
        member, host, cid = owners.get(key, ("-", "-", "-"))
        rows.append(Row(key[0], key[1], committed.get(key), ends.get(key, -1), member, host,
                        cid))
    return state, rows


def _end_offsets(client: KafkaWireClient, keys: list[tuple[str, int]]) -> dict[
        tuple[str, int], int]:
    by_topic: dict[str, list[int]] = {}
    for t, p in keys:
        by_topic.setdefault(t, []).append(p)
    if not by_topic:
        return {}
    resp = client.request(lo_req.ListOffsetsRequest(
        replica_id=BrokerId(-1), isolation_level=i8(0), topics=tuple(
            lo_req.ListOffsetsTopic(name=TopicName(t), partitions=tuple(
                lo_req.ListOffsetsPartition(partition_index=i32(p), current_leader_epoch=i32(-1),
                                            timestamp=i64(LATEST)) for p in ps))
            for t, ps in by_topic.items())))
    return {(t.name, p.partition_index): p.offset for t in resp.topics for p in t.partitions}


def print_describe(out: TextIO, group: str, state: str, rows: list[Row]) -> None:
    header = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
              "CONSUMER-ID", "HOST", "CLIENT-ID")
    table: list[tuple[Any, ...]] = [header]
    for r in rows:
        table.append((group, r.topic, r.partition, "-" if r.committed is None else r.committed,
                      r.end, "-" if r.lag is None else r.lag, r.member, r.host, r.client))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    print(f"Group {group} is {state}" + ("" if rows else " and has no offsets"), file=out)
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
