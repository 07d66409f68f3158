"""Produce: validate each partition's batches and append them, partitions concurrently.

The response waits for the WAL (acks=1 and acks=-1 both mean durable in the WAL); with
acks=0 the append still completes but no response is sent.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from kio.schema.errors import ErrorCode

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.api.traffic import traffic
from tidelog.api.zone_routing import proxied_owner
from tidelog.partition.partition import PartitionError
from tidelog.partition.producer_state import ProducerStateError
from tidelog.protocol import records
from tidelog.protocol.codec import RequestHeader
from tidelog.stream.engine import BackPressureTimeout, StorageError
from tidelog.stream.stream import StreamError

log = logging.getLogger(__name__)
PRODUCE = 0
NO_RESPONSE = object()  # acks=0


Outcome = tuple[ErrorCode, int, int, str | None, int, list[tuple[int, str]]]
"""(error, base offset, log start offset, message, log append time or -1, record errors)."""
_NO_ERRORS: list[tuple[int, str]] = []


async def append_outcome(
    ctx: Context, name: str, index: int, data: bytes | None, timeout: float, zone: str | None,
    count: bool = True,
) -> Outcome:
    """The outcome for one partition; its topic's limits (max.message.bytes, timestamp
    bounds) are checked by `Partition.append`. `count`: the bytes came from a client (not
    from a proxy's WAL: the proxy counted them)."""
    p = ctx.topics.partition(name, index)
    if p is None:
        return error(ctx.topics.missing(name, index)), -1, -1, None, -1, _NO_ERRORS
    if not data:
        return error("invalid_record"), -1, -1, "empty record set", -1, _NO_ERRORS
    try:
        res = await p.append(data, timeout)
        if count:
            t = traffic(ctx)
            t.produced(p.topic, data, zone or t.zone)
        return (NONE, res.base_offset, res.log_start_offset, None, res.log_append_time,
                _NO_ERRORS)
    except PartitionError as exc:
        return error(exc.code), -1, -1, str(exc), -1, _NO_ERRORS
    except ProducerStateError as exc:
        return error(exc.code), -1, -1, str(exc), -1, _NO_ERRORS
    except records.UnsupportedMagicError as exc:
        return error("unsupported_version"), -1, -1, str(exc), -1, _NO_ERRORS
    except records.RecordErrors as exc:
        log.info("produce to %s-%d refused: %s", p.topic, p.index, exc)
        return error("invalid_record"), -1, -1, str(exc), -1, exc.errors
    except records.CorruptRecordError as exc:
        log.warning("produce to %s-%d refused: %s", p.topic, p.index, exc)
        return error("corrupt_message"), -1, -1, str(exc), -1, _NO_ERRORS
    except records.InvalidRecordError as exc:
        log.warning("produce to %s-%d refused: %s", p.topic, p.index, exc)
        return error("invalid_record"), -1, -1, str(exc), -1, _NO_ERRORS
    except BackPressureTimeout as exc:
        return error("request_timed_out"), -1, -1, str(exc), -1, _NO_ERRORS
    except StorageError as exc:
        return error("kafka_storage_error"), -1, -1, str(exc), -1, _NO_ERRORS
    except StreamError as exc:
        return error("not_leader_or_follower"), -1, -1, str(exc), -1, _NO_ERRORS


async def handle_produce(ctx: Context, header: RequestHeader, req: Any) -> Any:
    version = header.api_version
    mod = response_module(PRODUCE, version)
    timeout = max(req.timeout.total_seconds(), 0.001)
    jobs: list[tuple[str, int, Any]] = []
    proxied: dict[int, list[tuple[int, str, int, bytes]]] = {}
    txn_id = getattr(req, "transactional_id", None)
    txn_denied = txn_id is not None and not ctx.allowed(
        header, Operation.WRITE, ResourceType.TRANSACTIONAL_ID, txn_id)
    for t in req.topic_data:
        denied = ("transactional_id_authorization_failed" if txn_denied else
                  None if ctx.allowed(header, Operation.WRITE, ResourceType.TOPIC, t.name)
                  else "topic_authorization_failed")
        for pd in t.partition_data:
            if req.acks not in (0, 1, -1):
                jobs.append((t.name, pd.index, _const(error("invalid_required_acks"))))
                continue
            if denied:
                jobs.append((t.name, pd.index, _const(error(denied))))
                continue
            owner = _proxied_owner(ctx, header, t.name, pd.index, pd.records)
            if owner is not None:
                topic = ctx.topics.get(t.name)
                assert topic is not None
                proxied.setdefault(owner, []).append(
                    (topic.streams[pd.index], t.name, pd.index, pd.records))
                jobs.append((t.name, pd.index, owner))
                continue
            jobs.append((t.name, pd.index, append_outcome(ctx, t.name, pd.index, pd.records,
                                                          timeout, header.zone)))
    local = [j[2] for j in jobs if not isinstance(j[2], int)]
    through = [_through_proxy(ctx, header, owner, parts, req.acks, timeout)
               for owner, parts in proxied.items()]
    done = await asyncio.gather(*local, *through)
    by_owner = dict(zip(proxied, done[len(local):], strict=True))
    local_results = iter(done[:len(local)])
    results: list[Outcome] = []
    for _name, _index, job in jobs:
        results.append(by_owner[job].pop(0) if isinstance(job, int) else next(local_results))
    if req.acks == 0:
        return NO_RESPONSE
    by_topic: dict[str, list[Any]] = {}
    for (name, index, _j), (code, base, start, msg, at, bad) in zip(jobs, results, strict=True):
        record_errors = tuple(make(mod.BatchIndexAndErrorMessage, batch_index=i,
                                   batch_index_error_message=m) for i, m in bad
                              ) if bad and hasattr(mod, "BatchIndexAndErrorMessage") else ()
        by_topic.setdefault(name, []).append(make(
            mod.PartitionProduceResponse, index=index, error_code=code, base_offset=base,
            log_append_time=None if at < 0 else datetime.fromtimestamp(at / 1000, UTC),
            log_start_offset=start, record_errors=record_errors, error_message=msg))
    return make(mod.ProduceResponse, throttle_time=timedelta(0), responses=tuple(
        make(mod.TopicProduceResponse, name=name, partition_responses=tuple(parts))
        for name, parts in by_topic.items()))


def _proxied_owner(ctx: Context, header: RequestHeader, name: str, index: int,
                   data: bytes | None) -> int | None:
    """The owner in another zone of a partition this broker proxies for a zoned client
    (zone routing), or None: appended here, or answered as not led here."""
    return proxied_owner(ctx, header, name, index) if data else None


async def _through_proxy(ctx: Context, header: RequestHeader, owner: int,
                         parts: list[tuple[int, str, int, bytes]], acks: int,
                         timeout: float) -> list[Outcome]:
    """Write `parts` here, have their owner append them (docs/design/0003-zones.md)."""
    proxy = ctx.produce_proxy
    assert proxy is not None
    try:
        answers = await proxy.produce(owner, parts, acks, timeout)
    except BackPressureTimeout as exc:
        return [(error("request_timed_out"), -1, -1, str(exc), -1, _NO_ERRORS)] * len(parts)
    except StorageError as exc:
        return [(error("kafka_storage_error"), -1, -1, str(exc), -1, _NO_ERRORS)] * len(parts)
    except Exception as exc:  # the owner could not be reached: the client looks again
        log.info("produce through this broker to broker %d failed: %r", owner, exc)
        return [(error("not_leader_or_follower"), -1, -1, f"owner {owner}: {exc}", -1,
                 _NO_ERRORS)] * len(parts)
    t = traffic(ctx)
    out: list[Outcome] = []
    for (_sid, name, _index, data), a in zip(parts, answers, strict=True):
        if a.error == 0:
            t.produced(name, data, header.zone or t.zone)
        out.append((ErrorCode(a.error), a.base_offset, a.log_start_offset, a.message,
                    a.log_append_time, _NO_ERRORS))
    return out


async def _const(code: ErrorCode) -> Outcome:
    return code, -1, -1, None, -1, _NO_ERRORS


APIS = [Api(PRODUCE, 3, 11, handle_produce)]
