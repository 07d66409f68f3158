"""`tidelog partitions move TOPIC:PARTITION --to NODE` and `tidelog partitions moves`:
partition moves over the Kafka protocol (AlterPartitionReassignments and
ListPartitionReassignments, what `kafka-reassign-partitions.sh --bootstrap-server`
sends). A move is answered at once and done by the partition's owner in seconds; `move
--wait` polls until it is."""

from __future__ import annotations

import argparse
import datetime
import sys
import time

from kio.schema.alter_partition_reassignments.v0 import request as apr_req
from kio.schema.errors import ErrorCode
from kio.schema.list_partition_reassignments.v0 import request as lpr_req
from kio.schema.types import BrokerId, TopicName
from kio.static.primitive import i32, i32Timedelta

from tidelog.tools.wire import KafkaWireClient

TIMEOUT = i32Timedelta.parse(datetime.timedelta(seconds=30))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("partitions", help="move partitions between brokers, list moves")
    p.add_argument("action", choices=["move", "moves"])
    p.add_argument("partition", nargs="?", metavar="TOPIC:PARTITION")
    p.add_argument("--to", type=int, metavar="NODE", help="the broker to move it to")
    p.add_argument("--cancel", action="store_true", help="cancel a move not done yet")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the move to be done")
    p.add_argument("--bootstrap-server", default="localhost:9092")


def run(args: argparse.Namespace) -> int:
    with KafkaWireClient(args.bootstrap_server) as client:
        if args.action == "moves":
            for topic, index, replicas in list_moves(client):
                print(f"{topic}:{index} -> {replicas[0]}")
            return 0
        if not args.partition or ":" not in args.partition or (args.to is None) == (
                not args.cancel):
            print("tidelog partitions move TOPIC:PARTITION --to NODE (or --cancel)",
                  file=sys.stderr)
            return 2
        topic, _, index_text = args.partition.rpartition(":")
        index = int(index_text)
        error = move(client, topic, index, None if args.cancel else args.to)
        if error is not None:
            print(f"tidelog partitions move {topic}:{index}: {error}", file=sys.stderr)
            return 1
        if args.wait > 0 and not args.cancel:
            deadline = time.monotonic() + args.wait
            while any((t, i) == (topic, index) for t, i, _r in list_moves(client)):
                if time.monotonic() > deadline:
                    print(f"{topic}:{index}: not moved after {args.wait:.0f}s",
                          file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print(f"{topic}:{index} -> {args.to}" + (" (done)" if args.wait > 0 else ""))
        return 0


def move(client: KafkaWireClient, topic: str, index: int, to: int | None) -> str | None:
    """Ask for a move (None `to`: cancel); the error message, or None."""
    resp = client.request(apr_req.AlterPartitionReassignmentsRequest(
        timeout=TIMEOUT, topics=(apr_req.ReassignableTopic(
            name=TopicName(topic), partitions=(apr_req.ReassignablePartition(
                partition_index=i32(index),
                replicas=None if to is None else (BrokerId(to),)),)),)))
    if resp.error_code != ErrorCode.none:
        return str(resp.error_message or resp.error_code.name)
    for t in resp.responses:
        for p in t.partitions:
            if p.error_code != ErrorCode.none:
                return str(p.error_message or p.error_code.name)
    return None


def list_moves(client: KafkaWireClient) -> list[tuple[str, int, list[int]]]:
    resp = client.request(lpr_req.ListPartitionReassignmentsRequest(
        timeout=TIMEOUT, topics=None))
    return [(t.name, p.partition_index, list(p.replicas))
            for t in resp.topics for p in t.partitions]
