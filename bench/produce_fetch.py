"""Produce latency/throughput and fetch throughput against one local broker.

Prints figures; asserts nothing. Run: `make bench` (or `.venv/bin/python bench/produce_fetch.py
[--dir DIR] [--quick]`). The WAL and objects live under --dir (default: a temp dir on the
local disk), and the disk's own fdatasync latency is measured there first, since the
produce latency floor is one fdatasync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.broker import BrokerProcess  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def fdatasync_latency(directory: Path, n: int = 300) -> list[float]:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    buf = os.urandom(4096)
    out = []
    try:
        for i in range(n):
            os.pwrite(fd, buf, (i % 64) * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            out.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return out


def create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def sequential_latency(bootstrap: str, topic: str, size: int, n: int) -> list[float]:
    """One message in flight at a time: the latency floor at low load."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    value = os.urandom(size)
    out: list[float] = []
    for _ in range(n):
        done = threading.Event()
        t = time.perf_counter()
        p.produce(topic, value, on_delivery=lambda err, msg, done=done: done.set())
        while not done.is_set():
            p.poll(0.01)
        out.append((time.perf_counter() - t) * 1000)
    return out


def throughput(bootstrap: str, topic: str, size: int, total_bytes: int, linger_ms: int,
               rate_bytes_s: float | None = None) -> tuple[float, float, list[float]]:
    """(MB/s, msg/s, per-message latency ms); rate-limited when `rate_bytes_s` is set."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": linger_ms,
                  "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20,
                  "message.max.bytes": 8 << 20})
    value = os.urandom(size)
    n = max(total_bytes // size, 1)
    lat: list[float] = []
    errors = []

    def cb(err: object, msg: object, t0: float) -> None:
        if err is not None:
            errors.append(err)
        lat.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    for i in range(n):
        if rate_bytes_s:
            due = start + i * size / rate_bytes_s
            while (now := time.perf_counter()) < due:
                p.poll(min(due - now, 0.005))
        t0 = time.perf_counter()
        while True:
            try:
                p.produce(topic, value, on_delivery=lambda e, m, t0=t0: cb(e, m, t0))
                break
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    p.flush(120)
    elapsed = time.perf_counter() - start
    if errors:
        print(f"  ! {len(errors)} delivery errors, e.g. {errors[0]}")
    return n * size / elapsed / 1e6, n / elapsed, lat


def fetch_throughput(bootstrap: str, topic: str, partitions: int) -> tuple[float, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 << 20,
                  "max.partition.fetch.bytes": 16 << 20})
    tps = [TopicPartition(topic, p, 0) for p in range(partitions)]
    highs = sum(c.get_watermark_offsets(tp, 10)[1] for tp in tps)
    c.assign(tps)
    got = nbytes = 0
    start = time.perf_counter()
    while got < highs:
        for m in c.consume(10000, 1.0):
            got += 1
            nbytes += len(m.value())
    elapsed = time.perf_counter() - start
    c.close()
    return nbytes / elapsed / 1e6, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="where the WAL and objects go (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="tidelog-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    scale = 0.25 if args.quick else 1.0

    fs = fdatasync_latency(base)
    print(f"disk fdatasync (4 KiB, {base}): P50 {pct(fs, 50):.3f} ms  P99 {pct(fs, 99):.3f} ms")

    broker = BrokerProcess(base / "broker", {"wal.capacity": str(2 << 30),
                                             "log.level": "WARNING"}).start()
    try:
        bs = broker.bootstrap
        create(bs, "lat", 1)
        create(bs, "small", 8)
        create(bs, "big", 8)
        sequential_latency(bs, "lat", 1024, 50)  # warm-up
        lat = sequential_latency(bs, "lat", 1024, int(1000 * scale))
        print(f"produce 1 KB, one at a time, acks=all: P50 {pct(lat, 50):.3f} ms  "
              f"P99 {pct(lat, 99):.3f} ms  ({pct(lat, 50) / pct(fs, 50):.2f}x fdatasync P50)")

        mbs, mps, lat = throughput(bs, "small", 1024, int(200e6 * scale), linger_ms=5)
        print(f"produce 1 KB, linger.ms=5, max rate: {mps:,.0f} msg/s  {mbs:.1f} MB/s  "
              f"latency P50 {pct(lat, 50):.1f} ms  P99 {pct(lat, 99):.1f} ms")

        mbs, mps, lat = throughput(bs, "big", 64 << 10, int(1e9 * scale), linger_ms=1)
        print(f"produce 64 KB, max rate: {mbs:.1f} MB/s  ({mps:,.0f} msg/s)  "
              f"latency P50 {pct(lat, 50):.1f} ms  P99 {pct(lat, 99):.1f} ms")

        mbs, mps, lat = throughput(bs, "big", 64 << 10, int(200e6 * scale), linger_ms=0,
                                   rate_bytes_s=20e6)
        print(f"produce 64 KB at 20 MB/s: achieved {mbs:.1f} MB/s  "
              f"latency P50 {pct(lat, 50):.2f} ms  P99 {pct(lat, 99):.2f} ms")

        mbs, n = fetch_throughput(bs, "big", 8)
        print(f"fetch 64 KB messages from the start (objects + cache): {mbs:.1f} MB/s "
              f"({n:,} messages)")
    finally:
        broker.stop()
        if not args.dir:  # the WAL file alone is wal.capacity bytes
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
