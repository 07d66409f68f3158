"""What metrics cost on the produce path: throughput with metrics on vs off.

Two brokers, one with `metrics.enabled=true` (scraped every second, as Prometheus would)
and one with `metrics.enabled=false` (no endpoint, no per-request timing), take the same
produce workloads in alternating rounds, so drift on a shared machine hits both alike.
The target is a difference under 3%.

Throughput on a shared machine is noisy (and the Python client may be the bottleneck), so
two steadier figures follow: the brokers' CPU time per message, and the hot-path cost
itself, measured in isolation (a connection answering requests with and without the
request-timing observer, plus the traffic counters every request goes through) and set
against the broker's CPU time per produce request. Prints figures; asserts nothing.

Run: `.venv/bin/python bench/metrics_overhead.py [--rounds N] [--mb MB] [--dir DIR]`
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from tidelog.api.traffic import Traffic
from tidelog.metrics.requests import RequestMetrics
from tidelog.net.server import KafkaConnection, RequestObserver
from tidelog.protocol.records import build_batch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.broker import BrokerProcess  # noqa: E402

# (name, producer settings): batched throughput, and many small requests (the per-request
# cost of request timing shows most there)
WORKLOADS = [
    ("1 KB, linger.ms=5", {"linger.ms": 5, "batch.size": 1 << 20}),
    ("1 KB, linger.ms=0", {"linger.ms": 0, "batch.size": 16 << 10}),
]
PARTITIONS = 4


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def produce(bootstrap: str, topic: str, settings: dict[str, int], total_bytes: int) -> float:
    """Messages per second for `total_bytes` of 1 KB messages, acks=all."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                  "queue.buffering.max.kbytes": 1 << 20, **settings})
    value = os.urandom(1024)
    n = total_bytes // len(value)
    start = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(topic, value)
                break
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    assert p.flush(120) == 0
    return n / (time.perf_counter() - start)


def scraper(url: str, stop: threading.Event, scrapes: list[float]) -> None:
    """Scrape every second, timing each scrape."""
    while not stop.wait(1.0):
        t = time.perf_counter()
        urllib.request.urlopen(url, timeout=10).read()
        scrapes.append(time.perf_counter() - t)


def produce_requests(url: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "kafka_network_requestmetrics_requests_total"
               and s.labels["request"] == "Produce")


class _Transport:
    def write(self, data: Any) -> None: ...
    def writelines(self, data: Any) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1)


def connection_seconds_per_request(observer: RequestObserver | None, n: int) -> float:
    """A connection answering `n` requests whose handler returns at once: what the listener
    spends per request, request timing included when `observer` is set."""
    body = struct.pack(">hhih", 0, 9, 1, 0)
    frame = struct.pack(">i", len(body)) + body
    chunk = frame * 32

    async def dispatch(_frame: bytes, _host: str) -> bytes:
        return b"answer"

    async def run() -> float:
        conn = KafkaConnection(dispatch, 1 << 20, lambda _c: None, observer)
        conn.connection_made(_Transport())
        start = time.perf_counter()
        for _ in range(n // 32):
            conn.data_received(chunk)
            await asyncio.sleep(0)  # the requests run, their answers are written
            await asyncio.sleep(0)
        return (time.perf_counter() - start) / n

    return min(asyncio.run(run()) for _ in range(5))


def traffic_seconds_per_request(n: int) -> float:
    """The counters every produce request goes through: request, response, one partition."""
    t = Traffic("default")
    batch = build_batch([(None, bytes(1000))] * 16)
    start = time.perf_counter()
    for _ in range(n):
        t.from_client("default", len(batch) + 100, len(batch))
        t.produced("topic", batch)
        t.to_client("default", 60, 0)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=int, default=150, help="MB produced per round and workload")
    ap.add_argument("--dir", help="where the brokers' data goes (default: a temp dir)")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="tidelog-metrics-bench-"))
    common = {"wal.capacity": str(512 << 20), "log.level": "WARNING",
              "num.partitions": str(PARTITIONS)}
    on = BrokerProcess(base / "on", common).start()
    off = BrokerProcess(base / "off", {**common, "metrics.enabled": "false"}).start()
    stop = threading.Event()
    scrapes: list[float] = []
    thread = threading.Thread(target=scraper, args=(on.metrics_url, stop, scrapes), daemon=True)
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}  # broker CPU microseconds per message
    on_cpu = 0.0
    try:
        for b in (on, off):
            admin = AdminClient({"bootstrap.servers": b.bootstrap})
            admin.create_topics([NewTopic("bench", PARTITIONS, 1)])["bench"].result(30)
            produce(b.bootstrap, "bench", WORKLOADS[0][1], 8 << 20)  # warm-up
        requests_before = produce_requests(on.metrics_url)
        thread.start()
        for r in range(args.rounds):
            for name, settings in WORKLOADS:
                order = [("on", on), ("off", off)] if r % 2 == 0 else [("off", off), ("on", on)]
                for label, b in order:
                    assert b.proc is not None
                    before = cpu_seconds(b.proc.pid)
                    mps = produce(b.bootstrap, "bench", settings, args.mb * 1_000_000)
                    used = cpu_seconds(b.proc.pid) - before
                    on_cpu += used if label == "on" else 0.0
                    results.setdefault((name, label), []).append(mps)
                    cpu.setdefault((name, label), []).append(
                        1e6 * used / (args.mb * 1_000_000 // 1024))
        requests = produce_requests(on.metrics_url) - requests_before
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
        on.stop()
        off.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    print(f"produce throughput, metrics on vs off ({args.rounds} rounds of {args.mb} MB, "
          f"median msg/s):")
    for name, _ in WORKLOADS:
        mon = statistics.median(results[(name, "on")])
        moff = statistics.median(results[(name, "off")])
        rounds_on = " ".join(f"{x:,.0f}" for x in results[(name, "on")])
        rounds_off = " ".join(f"{x:,.0f}" for x in results[(name, "off")])
        print(f"  {name}: on {mon:,.0f}  off {moff:,.0f}  difference "
              f"{100 * (mon - moff) / moff:+.1f}%   (rounds on: {rounds_on}; off: {rounds_off})")
        con, coff = statistics.median(cpu[(name, "on")]), statistics.median(cpu[(name, "off")])
        print(f"    broker CPU per message: on {con:.2f} us  off {coff:.2f} us  difference "
              f"{100 * (con - coff) / coff:+.1f}%")
    if scrapes:
        print(f"  scrapes during the runs: {len(scrapes)}, median "
              f"{1000 * statistics.median(scrapes):.1f} ms, max {1000 * max(scrapes):.1f} ms")
    n = 100_000
    plain = connection_seconds_per_request(None, n)
    timed = connection_seconds_per_request(RequestMetrics().observe, n)
    counters = traffic_seconds_per_request(n)
    per_request = on_cpu / requests if requests else float("nan")
    cost = timed - plain + counters
    print(f"hot path per request: listener {1e6 * plain:.2f} us without request timing, "
          f"{1e6 * timed:.2f} us with it; traffic counters {1e6 * counters:.2f} us")
    print(f"  = {1e6 * cost:.2f} us of metrics per produce request, against "
          f"{1e6 * per_request:.0f} us of broker CPU per produce request in the runs above "
          f"({requests:,.0f} requests): {100 * cost / per_request:.1f}% overhead")


if __name__ == "__main__":
    main()
