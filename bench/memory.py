"""Broker memory under load: RSS with many partitions, the default 30 s upload interval
and a steady produce rate. Prints figures; asserts nothing.

    .venv/bin/python bench/memory.py [--partitions 1280] [--rate-mb 20] [--seconds 60]
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

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.broker import BrokerProcess  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=1280)
    ap.add_argument("--rate-mb", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--dir")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="tidelog-mem-"))
    broker = BrokerProcess(base / "broker", {"wal.capacity": str(2 << 30),
                                             "log.level": "WARNING"}).start()
    assert broker.proc is not None
    pid = broker.proc.pid
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic("mem", args.partitions, 1)])["mem"].result(60)
        print(f"idle RSS with {args.partitions} partitions: {rss_mb(pid):.0f} MiB")
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_mb(pid))
                time.sleep(0.5)

        t = threading.Thread(target=sample)
        t.start()
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                      "linger.ms": 5})
        value = os.urandom(args.size)
        rate = args.rate_mb * 1e6 / args.size
        start = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - start < args.seconds:
            due = start + i / rate
            if now < due:
                p.poll(min(due - now, 0.01))
                continue
            try:
                p.produce("mem", value, partition=i % args.partitions)
                i += 1
            except BufferError:
                p.poll(0.01)
            p.poll(0)
        p.flush(60)
        elapsed = time.perf_counter() - start
        stop.set()
        t.join()
        print(f"produced {i * args.size / elapsed / 1e6:.1f} MB/s for {elapsed:.0f} s "
              f"({args.size} B messages over {args.partitions} partitions)")
        print(f"broker RSS: max {max(samples):.0f} MiB, last {samples[-1]:.0f} MiB")
    finally:
        broker.stop()
        if not args.dir:  # the WAL file alone is wal.capacity bytes
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
