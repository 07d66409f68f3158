"""`tidelog transactions`: open transactions and the last-stable-offset lag they cause
(how far read_committed consumers trail the high watermark), through the Kafka protocol."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import TextIO

from kio.schema.describe_transactions.v0 import request as dt_req
from kio.schema.list_offsets.v7 import request as lo_req
from kio.schema.list_transactions.v0 import request as lt_req
from kio.schema.types import BrokerId, TopicName, TransactionalId
from kio.static.primitive import i8, i32, i64

from tidelog.tools.wire import KafkaWireClient

LATEST = -1
READ_UNCOMMITTED, READ_COMMITTED = 0, 1


@dataclass(slots=True)
class OpenTxn:
    transactional_id: str
    state: str
    producer_id: int
    producer_epoch: int
    age_s: float
    partitions: list[tuple[str, int]] = field(default_factory=list)


def open_transactions(client: KafkaWireClient) -> list[OpenTxn]:
    listed = client.request(lt_req.ListTransactionsRequest(state_filters=(),
                                                           producer_id_filters=()))
    ids = [t.transactional_id for t in listed.transaction_states
           if t.transaction_state in ("Ongoing", "PrepareCommit", "PrepareAbort")]
    if not ids:
        return []
    described = client.request(dt_req.DescribeTransactionsRequest(
        transactional_ids=tuple(TransactionalId(i) for i in ids)))
    now = datetime.datetime.now(datetime.UTC)
    out = []
    for t in described.transaction_states:
        age = (now - t.transaction_start_time).total_seconds()
        out.append(OpenTxn(t.transactional_id, t.transaction_state, t.producer_id,
                           t.producer_epoch, age,
                           [(d.topic, p) for d in t.topics for p in d.partitions]))
    return out


def lso_lag(client: KafkaWireClient, partitions: list[tuple[str, int]]) -> dict[
        tuple[str, int], tuple[int, int]]:
    """(high watermark, last stable offset) of each partition."""
    by_topic: dict[str, list[int]] = {}
    for t, p in sorted(set(partitions)):
        by_topic.setdefault(t, []).append(p)

    def latest(isolation: int) -> dict[tuple[str, int], int]:
        resp = client.request(lo_req.ListOffsetsRequest(
            replica_id=BrokerId(-1), isolation_level=i8(isolation), topics=tuple(
                lo_req.ListOffsetsTopic(name=TopicName(t), partitions=tuple(
                    lo_req.ListOffsetsPartition(partition_index=i32(p),
                                                current_leader_epoch=i32(-1),
                                                timestamp=i64(LATEST)) for p in ps))
                for t, ps in by_topic.items())))
        return {(t.name, p.partition_index): p.offset for t in resp.topics
                for p in t.partitions}

    if not by_topic:
        return {}
    hw, lso = latest(READ_UNCOMMITTED), latest(READ_COMMITTED)
    return {k: (hw[k], lso.get(k, hw[k])) for k in hw}


def print_transactions(out: TextIO, txns: list[OpenTxn],
                       lag: dict[tuple[str, int], tuple[int, int]]) -> None:
    if not txns:
        print("no open transactions", file=out)
        return
    for t in txns:
        print(f"{t.transactional_id}  {t.state}  producer {t.producer_id}/{t.producer_epoch}"
              f"  open {t.age_s:.1f}s", file=out)
        for key in sorted(set(t.partitions)):
            hw, lso = lag.get(key, (-1, -1))
            print(f"  {key[0]}-{key[1]}  high-watermark {hw}  last-stable {lso}"
                  f"  lso-lag {hw - lso}", file=out)
