"""Fetch sessions (KIP-227) and long polling, on the wire."""

from __future__ import annotations

import datetime
import threading
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12 import request as fr

from tests.integration.broker import BrokerProcess
from tests.integration.rawclient import RawClient


def fetch(c: RawClient, parts: dict[int, int], session_id: int = 0, epoch: int = -1,
          forget: tuple[int, ...] = (), max_wait_ms: int = 0, min_bytes: int = 1) -> object:
    topics = (fr.FetchTopic(topic="s", partitions=tuple(
        fr.FetchPartition(partition=p, fetch_offset=o, partition_max_bytes=1 << 20)
        for p, o in parts.items())),) if parts else ()
    forgotten = (fr.ForgottenTopic(topic="s", partitions=forget),) if forget else ()
    return c.request(fr.FetchRequest(
        max_wait=datetime.timedelta(milliseconds=max_wait_ms), min_bytes=min_bytes,
        session_id=session_id, session_epoch=epoch, topics=topics,
        forgotten_topics_data=forgotten))


def partitions_in(resp: object) -> dict[int, int]:
    """partition -> high watermark of what the response carries."""
    return {p.partition_index: p.high_watermark
            for t in resp.responses for p in t.partitions}  # type: ignore[attr-defined]


def produce(bootstrap: str, partition: int, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        p.produce("s", f"v{i}".encode(), partition=partition)
    assert p.flush(10) == 0


def test_incremental_session(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("s", 3, 1)])["s"].result(10)
    produce(broker.bootstrap, 0, 5)
    c = RawClient("127.0.0.1", broker.port)
    full = fetch(c, {0: 0, 1: 0, 2: 0}, session_id=0, epoch=0)  # new session
    assert full.error_code == ErrorCode.none  # type: ignore[attr-defined]
    sid = full.session_id  # type: ignore[attr-defined]
    assert sid > 0
    assert partitions_in(full) == {0: 5, 1: 0, 2: 0}
    # the consumer moved on to offset 5; nothing else changed: no partitions come back
    assert partitions_in(fetch(c, {0: 5}, sid, 1)) == {}
    produce(broker.bootstrap, 2, 3)
    assert partitions_in(fetch(c, {}, sid, 2)) == {2: 3}  # only what changed
    # forget partition 2: new data there is no longer reported
    assert partitions_in(fetch(c, {}, sid, 3, forget=(2,))) == {}
    produce(broker.bootstrap, 2, 1)
    assert partitions_in(fetch(c, {}, sid, 4)) == {}
    # wrong epoch and unknown session are refused
    assert fetch(c, {}, sid, 99).error_code == ErrorCode.invalid_fetch_session_epoch  # type: ignore[attr-defined]
    assert fetch(c, {}, 123456, 1).error_code == ErrorCode.fetch_session_id_not_found  # type: ignore[attr-defined]
    # closing the session (epoch -1) turns the request into a sessionless full fetch
    closed = fetch(c, {0: 5}, sid, -1)
    assert closed.session_id == 0 and partitions_in(closed) == {0: 5}  # type: ignore[attr-defined]
    assert fetch(c, {}, sid, 5).error_code == ErrorCode.fetch_session_id_not_found  # type: ignore[attr-defined]
    c.close()


def test_long_poll_waits_and_wakes_on_append(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("s", 1, 1)])["s"].result(10)
    c = RawClient("127.0.0.1", broker.port)
    t0 = time.monotonic()
    resp = fetch(c, {0: 0}, max_wait_ms=400)
    waited = time.monotonic() - t0
    assert partitions_in(resp) == {0: 0} and waited >= 0.35  # max_wait honoured
    threading.Timer(0.3, produce, (broker.bootstrap, 0, 1)).start()
    t0 = time.monotonic()
    resp = fetch(c, {0: 0}, max_wait_ms=10_000)
    waited = time.monotonic() - t0
    assert partitions_in(resp) == {0: 1}
    assert 0.2 < waited < 5, waited  # woken by the append, not by the timeout
    c.close()


def test_leader_epoch_of_the_client_is_checked(broker: BrokerProcess) -> None:
    """KIP-320: a fetch naming an older leader epoch than the partition's gets
    FENCED_LEADER_EPOCH (the client refreshes metadata), a newer one UNKNOWN_LEADER_EPOCH;
    -1 is not checked. A restart opens the partition with a new epoch."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("s", 1, 1)])["s"].result(10)
    produce(broker.bootstrap, 0, 2)
    broker.restart()
    c = RawClient("127.0.0.1", broker.port)

    def code(leader_epoch: int) -> ErrorCode:
        resp = c.request(fr.FetchRequest(
            max_wait=datetime.timedelta(0), min_bytes=1, session_id=0, session_epoch=-1,
            topics=(fr.FetchTopic(topic="s", partitions=(fr.FetchPartition(
                partition=0, fetch_offset=0, partition_max_bytes=1 << 20,
                current_leader_epoch=leader_epoch),)),), forgotten_topics_data=()))
        return resp.responses[0].partitions[0].error_code  # type: ignore[no-any-return]

    accepted = [e for e in range(6) if code(e) == ErrorCode.none]
    assert len(accepted) == 1 and accepted[0] >= 2  # one epoch, bumped by the restart
    epoch = accepted[0]
    assert code(epoch - 1) == ErrorCode.fenced_leader_epoch
    assert code(epoch + 1) == ErrorCode.unknown_leader_epoch
    assert code(epoch) == ErrorCode.none and code(-1) == ErrorCode.none
