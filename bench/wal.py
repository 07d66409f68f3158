"""Append latency, throughput and S3 requests of each WAL choice, on this machine.

Prints figures; asserts nothing. Run: `.venv/bin/python bench/wal.py [--seconds 3]
[--dir DIR] [--only file,direct,s3]` (about two minutes with the defaults).

Two tables:
1. *Group sizes*: one group in flight at a time, each group `1 KiB`, `64 KiB` or `1 MiB` of
   1 KiB records appended together (the S3 WAL's `batch.bytes` set to exactly one group, so
   each group is one PUT). Latency is per append, from call to durable; throughput is what
   one group in flight sustains; `PUT/GiB` counts PUTs per GiB of records.
2. *Paced*: records arrive at a fixed rate, as from producers; the S3 WAL runs with its
   defaults (`batch.interval.ms=250`, `batch.bytes=8MiB`), so its latency and PUT count
   show what the group-commit interval trades.
WALs: a file (buffered, fdatasync), a file with O_DIRECT, an S3 WAL on moto (a local S3
server in a child process), and, labelled EMULATED in every row, a file WAL with shared-
file-system latency added and an S3 WAL with S3-like latency added (`objectstore/latency`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from tidelog.objectstore.latency import LatencyObjectStore, LatencyProfile  # noqa: E402
from tidelog.objectstore.uri import open_object_store  # noqa: E402
from tidelog.stream.wal.base import WAL  # noqa: E402
from tidelog.stream.wal.file_wal import FileWAL  # noqa: E402
from tidelog.stream.wal.latency import LatencyWAL  # noqa: E402
from tidelog.stream.wal.object_wal import ObjectWAL  # noqa: E402
from tidelog.stream.wal.ring_format import RECORD_HEADER_SIZE  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RECORD = 1 * KiB
SHARED_FS = LatencyProfile(median=0.001, p99=0.005)
"""A shared file system across the network (FSx/NFS-like): ~1 ms, tail 5 ms."""
S3_LIKE = LatencyProfile(median=0.06, p99=0.25, bandwidth=100 * MiB)
"""S3 Standard PUTs: tens of ms, a tail of hundreds, ~100 MiB/s per request."""


@dataclass
class Kind:
    name: str
    storage: str
    """Where the bytes go; EMULATED rows say so here."""
    make: Callable[[int], WAL]
    """(S3 batch bytes) -> a new, unopened WAL."""
    is_s3: bool = False


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


# --- moto, in a child process so its threads do not share our GIL ---


def start_moto() -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = {"endpoint": f"http://127.0.0.1:{port}", "region": "us-east-1",
               "access_key_id": "bench", "secret_access_key": "bench", "allow_http": "true"}
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto did not start") from None
            time.sleep(0.1)
    import boto3  # a dev dependency, like moto

    boto3.client("s3", endpoint_url=options["endpoint"], region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench"
                 ).create_bucket(Bucket="bench")
    return proc, options


def kinds(directory: Path, s3: dict[str, str] | None, only: set[str]) -> list[Kind]:
    def file_wal(direct: bool) -> Callable[[int], WAL]:
        def make(_: int) -> WAL:
            path = directory / f"wal-{uuid.uuid4().hex}"
            return FileWAL(str(path), capacity=256 * MiB, direct=direct)
        return make

    def s3_wal(profile: LatencyProfile | None, interval: float = 0.25
               ) -> Callable[[int], WAL]:
        def make(batch_bytes: int) -> WAL:
            assert s3 is not None
            query = "&".join(f"{k}={v}" for k, v in s3.items())
            store = open_object_store(f"s3://bench/wal-{uuid.uuid4().hex}?{query}")
            if profile is not None:
                store = LatencyObjectStore(store, profile)
            return ObjectWAL(store, capacity=256 * MiB, batch_interval=interval,
                             batch_bytes=batch_bytes, owns_store=True)
        return make

    out: list[Kind] = []
    if "file" in only:
        out.append(Kind("file", f"local file ({directory})", file_wal(False)))
        out.append(Kind("file + shared-FS latency", SHARED_FS.describe(),
                        lambda n: LatencyWAL(file_wal(False)(n), SHARED_FS)))
    if "direct" in only:
        out.append(Kind("file O_DIRECT", f"local file ({directory})", file_wal(True)))
    if "s3" in only and s3 is not None:
        out.append(Kind("S3 WAL", "moto (local S3 server)", s3_wal(None), is_s3=True))
        out.append(Kind("S3 WAL + S3 latency", S3_LIKE.describe(), s3_wal(S3_LIKE),
                        is_s3=True))
    return out


# --- measurements ---


@dataclass
class Result:
    latencies: list[float]
    payload: int
    seconds: float
    puts: int

    def row(self, kind: Kind, label: str) -> str:
        lat = sorted(self.latencies)
        mbps = self.payload / MiB / self.seconds if self.seconds else 0.0
        puts = f"{self.puts / (self.payload / GiB):,.0f}" if kind.is_s3 else "-"
        p999 = f"{pct(lat, 99.9) * 1e3:8.2f}" if len(lat) >= 1000 else "    n<1k"
        return (f"| {kind.name:<26} | {label:>8} | {len(lat):>6} | {pct(lat, 50) * 1e3:8.2f} | "
                f"{pct(lat, 99) * 1e3:8.2f} | {p999} | {mbps:8.2f} | {puts:>9} | "
                f"{kind.storage} |")


async def groups(kind: Kind, group: int, seconds: float) -> Result:
    """Waves of `group` bytes of records, one wave in flight, trimmed as they complete."""
    n = max(1, group // RECORD)
    payload = os.urandom(RECORD)
    wal = kind.make(n * (RECORD + RECORD_HEADER_SIZE))
    await wal.open(1)
    latencies: list[float] = []

    async def one(i: int) -> int:
        started = time.perf_counter()
        end: int = await wal.append(1, 1, i, i, payload)
        latencies.append(time.perf_counter() - started)
        return end

    try:
        for w in range(3):  # warm-up
            await wal.trim(max(await asyncio.gather(*(one(w * n + i) for i in range(n)))))
        latencies.clear()
        puts, waves = wal.stats.syncs, 0
        started = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds or (len(latencies) >= 3000 and waves >= 20):
                break
            ends = await asyncio.gather(*(one(waves * n + i) for i in range(n)))
            await wal.trim(max(ends))
            waves += 1
        return Result(latencies, waves * n * RECORD, elapsed, wal.stats.syncs - puts)
    finally:
        await wal.close()


async def paced(kind: Kind, rate: float, seconds: float) -> Result:
    """1 KiB records arriving at `rate` bytes/s (open loop), trimmed every 100 ms."""
    payload = os.urandom(RECORD)
    wal = kind.make(8 * MiB)
    await wal.open(1)
    latencies: list[float] = []
    count = int(rate * seconds / RECORD)
    interval = RECORD / rate
    done = 0

    async def one(i: int, at: float) -> None:
        nonlocal done
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        started = time.perf_counter()
        end = await wal.append(1, 1, i, i, payload)
        latencies.append(time.perf_counter() - started)
        done = max(done, end)

    async def trimmer() -> None:
        while True:
            await asyncio.sleep(0.1)
            if done:
                await wal.trim(done)

    trimming = asyncio.create_task(trimmer())
    try:
        puts = wal.stats.syncs
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, t0 + i * interval) for i in range(count)))
        elapsed = time.perf_counter() - t0
        return Result(latencies, count * RECORD, elapsed, wal.stats.syncs - puts)
    finally:
        trimming.cancel()
        await wal.close()


HEADER = ("| WAL                        |    group |  appends |  p50 ms |  p99 ms | p999 ms | "
          "    MiB/s |   PUT/GiB | storage |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")


async def main(args: argparse.Namespace) -> None:
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tidelog-walbench-"))
    directory.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    moto = None
    s3 = None
    if "s3" in only:
        moto, s3 = start_moto()
    try:
        cases = kinds(directory, s3, only)
        print(f"# WAL bench: {len(cases)} WALs, {args.seconds:g} s per cell, 1 KiB records; "
              "EMULATED rows add drawn latency (a test tool), all others are real I/O\n")
        print("## One group in flight, by group size\n")
        print(HEADER)
        for kind in cases:
            for size, label in ((KiB, "1 KiB"), (64 * KiB, "64 KiB"), (MiB, "1 MiB")):
                print((await groups(kind, size, args.seconds)).row(kind, label), flush=True)
        rate = args.rate * MiB
        print(f"\n## Paced: {args.rate:g} MiB/s of 1 KiB records, S3 WAL at its defaults "
              "(batch.interval.ms=250, batch.bytes=8MiB)\n")
        print(HEADER)
        for kind in cases:
            if kind.name in ("file O_DIRECT",):
                continue  # same as file at this rate
            print((await paced(kind, rate, args.seconds)).row(kind, "paced"), flush=True)
    finally:
        if moto is not None:
            moto.kill()
            moto.wait()
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell")
    parser.add_argument("--dir", help="where file WALs go (default: a temp dir)")
    parser.add_argument("--only", default="file,direct,s3", help="WAL kinds to run")
    parser.add_argument("--rate", type=float, default=2.0, help="MiB/s for the paced table")
    asyncio.run(main(parser.parse_args()))
