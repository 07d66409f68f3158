"""WriteTxnMarkers (Kafka's inter-broker API): a transaction coordinator on another broker
asks this one to end a transaction in the partitions it owns, with a COMMIT or ABORT
control batch in each; and `send_markers`, the coordinator's side of the same request.

Not authorized per client yet: Kafka requires CLUSTER_ACTION from a broker principal, and
inter-broker connections have no authentication until the security issue adds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kio.schema.types import ProducerId, TopicName
from kio.schema.write_txn_markers.v1 import request as markers_req
from kio.static.primitive import i16, i32

from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.partition.producer_state import ProducerStateError
from tidelog.protocol.codec import RequestHeader
from tidelog.stream.stream import StreamError

log = logging.getLogger(__name__)

WRITE_TXN_MARKERS = 27


async def write_marker(ctx: Context, topic: str, index: int, producer_id: int,
                       producer_epoch: int, commit: bool, coordinator_epoch: int) -> str | None:
    """End the transaction in one partition owned here; the Kafka error name or None.

    A partition of `__consumer_offsets` gets no control batch: the transaction's offsets
    staged for its groups are committed or dropped (its records are the coordinator's)."""
    if topic == ctx.coordinator.log.topic:
        if index not in ctx.coordinator.log.logs:
            return "not_coordinator"
        try:
            await ctx.coordinator.offsets.finish_staged(index, producer_id, commit)
        except Exception as exc:
            log.warning("staged offsets of producer %d in %s-%d: %r", producer_id, topic,
                        index, exc)
            return "coordinator_load_in_progress"
        return None
    p = ctx.topics.partition(topic, index)
    if p is None:
        return ctx.topics.missing(topic, index)
    try:
        await p.write_marker(producer_id, producer_epoch, commit, coordinator_epoch)
    except ProducerStateError as exc:
        return exc.code
    except StreamError:
        return "not_leader_or_follower"
    except Exception as exc:
        log.warning("marker for %s-%d failed: %r", topic, index, exc)
        return "kafka_storage_error"
    return None


async def handle_write_txn_markers(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(WRITE_TXN_MARKERS, header.api_version)
    results = []
    for m in req.markers:
        jobs = [(t.name, i, write_marker(ctx, t.name, i, m.producer_id, m.producer_epoch,
                                         m.transaction_result, m.coordinator_epoch))
                for t in m.topics for i in t.partition_indexes]
        codes = await asyncio.gather(*(j[2] for j in jobs))
        by_topic: dict[str, list[Any]] = {}
        for (name, index, _), code in zip(jobs, codes, strict=True):
            by_topic.setdefault(name, []).append(make(
                mod.WritableTxnMarkerPartitionResult, partition_index=index,
                error_code=error(code) if code else NONE))
        results.append(make(mod.WritableTxnMarkerResult, producer_id=m.producer_id,
                            topics=tuple(make(mod.WritableTxnMarkerTopicResult, name=n,
                                              partitions=tuple(ps))
                                         for n, ps in by_topic.items())))
    return make(mod.WriteTxnMarkersResponse, markers=tuple(results))


Send = Callable[[int, Any], Awaitable[Any]]
"""(broker node, kio request) -> its response: the inter-broker client."""


async def send_markers(send: Send, node: int, producer_id: int, producer_epoch: int,
                       commit: bool, coordinator_epoch: int,
                       partitions: list[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
    """Ask broker `node` to end the transaction in `partitions` (which it owns)."""
    by_topic: dict[str, list[int]] = {}
    for topic, index in partitions:
        by_topic.setdefault(topic, []).append(index)
    req = markers_req.WriteTxnMarkersRequest(markers=(markers_req.WritableTxnMarker(
        producer_id=ProducerId(producer_id), producer_epoch=i16(producer_epoch),
        transaction_result=commit,
        topics=tuple(markers_req.WritableTxnMarkerTopic(
            name=TopicName(t), partition_indexes=tuple(i32(i) for i in ps))
            for t, ps in by_topic.items()),
        coordinator_epoch=i32(coordinator_epoch)),))
    resp = await send(node, req)
    out: dict[tuple[str, int], str | None] = {}
    for m in resp.markers:
        for t in m.topics:
            for p in t.partitions:
                out[(t.name, p.partition_index)] = (None if p.error_code == NONE
                                                    else p.error_code.name.lower())
    return out


APIS = [Api(WRITE_TXN_MARKERS, 0, 1, handle_write_txn_markers)]
