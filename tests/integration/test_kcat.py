"""kcat (librdkafka's command-line client) against a real broker process.

kcat has no admin API, so its topics are auto-created with `num.partitions=8`. Its producer
takes keys from stdin but only fixed headers and no timestamps, so a second test produces
per-message headers and explicit timestamps with confluent-kafka and reads them with kcat.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from tests.integration.broker import BrokerProcess
from tests.integration.workload import (
    CODECS,
    N_CODEC_MESSAGES,
    N_MESSAGES,
    N_PARTITIONS,
    Msg,
    check,
    messages,
    placed_by_consumer,
)

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
KCAT_HEADERS = (("h", b"kcat"), ("empty", b""))


@pytest.fixture
def broker8(broker_factory: type[BrokerProcess]) -> BrokerProcess:
    return broker_factory({"num.partitions": str(N_PARTITIONS)}).start()


def kcat(*args: str, stdin: bytes | None = None, timeout: float = 60
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=timeout)


def kcat_produce(bootstrap: str, topic: str, sent: list[Msg], codec: str | None) -> None:
    codec_args = [] if codec is None else ["-X", f"compression.codec={codec}"]
    lines = b"".join(m.key + b"\t" + m.value + b"\n" for m in sent)
    r = kcat("-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-H", "h=kcat", "-H", "empty=",
             "-X", "linger.ms=5", *codec_args, stdin=lines)
    assert r.returncode == 0, r.stderr.decode()
    assert b"fail" not in r.stderr.lower(), r.stderr.decode()


def kcat_consume(bootstrap: str, topic: str, *extra: str) -> list[dict[str, Any]]:
    """Every message from the beginning to the end of each partition, as kcat's JSON."""
    r = kcat("-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q",
             "-X", "fetch.message.max.bytes=16384", *extra)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def by_partition(records: list[dict[str, Any]]) -> dict[int, list[tuple[int, Msg]]]:
    got: dict[int, list[tuple[int, Msg]]] = {}
    for r in records:
        h = r.get("headers") or []
        headers = tuple((h[i], (h[i + 1] or "").encode()) for i in range(0, len(h), 2))
        assert r["tstype"] == "create", r
        got.setdefault(r["partition"], []).append((r["offset"], Msg(
            r["key"].encode(), r["payload"].encode(), headers, r["ts"])))
    return got


def metadata(bootstrap: str, topic: str) -> dict[str, Any]:
    r = kcat("-L", "-J", "-b", bootstrap, "-t", topic)
    assert r.returncode == 0, r.stderr.decode()
    (t,) = json.loads(r.stdout)["topics"]
    assert isinstance(t, dict)
    return t


@pytest.mark.parametrize("codec", [None, *CODECS])
def test_kcat_roundtrip(broker8: BrokerProcess, codec: str | None) -> None:
    """kcat produces keyed messages (auto-creating the topic) and consumes them back."""
    topic = f"kc-{codec or 'none'}"
    n = N_MESSAGES if codec is None else N_CODEC_MESSAGES
    sent = [Msg(m.key, m.value, KCAT_HEADERS, 0) for m in messages(n)]
    t0 = int(time.time() * 1000)
    kcat_produce(broker8.bootstrap, topic, sent, codec)
    t1 = int(time.time() * 1000)
    meta = metadata(broker8.bootstrap, topic)
    assert [p["partition"] for p in meta["partitions"]] == list(range(N_PARTITIONS))
    got = by_partition(kcat_consume(broker8.bootstrap, topic))
    # kcat cannot set timestamps: librdkafka stamps CreateTime when a message is produced
    for p, msgs in got.items():
        stamps = [m.timestamp for _, m in msgs]
        assert all(t0 - 1000 <= ts <= t1 + 1000 for ts in stamps), p
        assert stamps == sorted(stamps), f"partition {p}: timestamps out of order"
    got = {p: [(o, Msg(m.key, m.value, m.headers, 0)) for o, m in msgs]
           for p, msgs in got.items()}
    check(sent, placed_by_consumer(sent, got), got)


def test_kcat_reads_headers_and_timestamps(broker8: BrokerProcess) -> None:
    """Per-message headers and explicit timestamps (written by librdkafka through the
    Python binding) read back with kcat, then found again by kcat's timestamp query."""
    topic = "kc-explicit"
    sent = messages(N_CODEC_MESSAGES)
    placed: list[tuple[int, int] | None] = [None] * len(sent)
    p = Producer({"bootstrap.servers": broker8.bootstrap, "linger.ms": 5,
                  "compression.type": "zstd"})

    def report(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            assert err is None, err
            placed[i] = (msg.partition(), msg.offset())
        return cb

    for i, m in enumerate(sent):
        p.produce(topic, key=m.key, value=m.value, headers=list(m.headers),
                  timestamp=m.timestamp, on_delivery=report(i))
        p.poll(0)
    assert p.flush(60) == 0
    assert all(x is not None for x in placed)
    got = by_partition(kcat_consume(broker8.bootstrap, topic))
    check(sent, [x for x in placed if x is not None], got)

    # kcat -Q: the first offset at or after a timestamp. The broker answers at batch
    # granularity, so the answer may be a few messages early, never late.
    queries: list[str] = []
    for part, msgs in got.items():
        queries += ["-t", f"{topic}:{part}:{msgs[len(msgs) // 2][1].timestamp}"]
    r = kcat("-Q", "-J", "-b", broker8.bootstrap, *queries)
    assert r.returncode == 0, r.stderr.decode()
    answer = json.loads(r.stdout)[topic]
    assert sorted(int(k) for k in answer if k != "topic") == sorted(got)
    for part, msgs in got.items():
        mid_offset, mid = msgs[len(msgs) // 2]
        found = answer[str(part)]["offset"]
        assert 0 <= found <= mid_offset, (part, found, mid_offset)
        assert all(m.timestamp < mid.timestamp for o, m in msgs if o < found)
    r = kcat("-Q", "-J", "-b", broker8.bootstrap, "-t", f"{topic}:0:0",
             "-t", f"{topic}:1:{sent[-1].timestamp + 1}")
    answer = json.loads(r.stdout)[topic]
    assert answer["0"]["offset"] == 0  # before everything: the first offset
    assert answer["1"]["offset"] == -1  # after the last timestamp: none


def test_kcat_auto_create_off(broker_factory: type[BrokerProcess]) -> None:
    b = broker_factory({"auto.create.topics.enable": "false",
                        "num.partitions": str(N_PARTITIONS)}).start()
    r = kcat("-P", "-b", b.bootstrap, "-t", "kc-missing", "-m", "3",
             "-X", "topic.metadata.propagation.max.ms=1000",
             stdin=b"a\nb\n", timeout=60)
    assert r.returncode != 0
    assert b"Unknown topic or partition" in r.stderr, r.stderr.decode()
    r = kcat("-L", "-J", "-b", b.bootstrap, "-t", "kc-missing")
    (t,) = json.loads(r.stdout)["topics"]
    assert "Unknown topic or partition" in t.get("error", ""), t
    topics = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10).topics
    assert "kc-missing" not in topics


def test_kcat_auto_create_on(broker_factory: type[BrokerProcess]) -> None:
    b = broker_factory({"auto.create.topics.enable": "true", "num.partitions": "3"}).start()
    topics = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10).topics
    assert "kc-auto" not in topics
    r = kcat("-P", "-b", b.bootstrap, "-t", "kc-auto", "-K", ":", stdin=b"k:v\n")
    assert r.returncode == 0, r.stderr.decode()
    assert [p["partition"] for p in metadata(b.bootstrap, "kc-auto")["partitions"]] == [0, 1, 2]
    recs = kcat_consume(b.bootstrap, "kc-auto")
    assert [(r["offset"], r["key"], r["payload"]) for r in recs] == [(0, "k", "v")]
