"""`tidelog perf` against a real broker: short runs (fractional minutes) whose JSON report
must account for every record sent and received, with latency percentiles present."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.broker import BrokerProcess

FAST_GROUPS = {"group.initial.rebalance.delay.ms": "0"}
PERCENTILES = ("50th", "75th", "90th", "95th", "99th", "999th", "9999th")


def run_perf(bootstrap: str, out: Path, *flags: str) -> tuple[dict[str, Any], str]:
    """Runs the tool; `out` is its --output file, or a directory to run in without
    --output (the report is then `perf-<timestamp>.json` there)."""
    output = [] if out.is_dir() else ["--output", str(out)]
    cmd = [sys.executable, "-m", "tidelog.cli", "perf", "-B", bootstrap, *output,
           "--processes", "2", "-i", "0.5", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          cwd=out if out.is_dir() else None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if out.is_dir():
        (out,) = out.glob("perf-*.json")
        assert out.with_suffix(".html").exists()
    return json.loads(out.read_text()), proc.stdout


def phase_row(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in report["accounting"] if r["phase"] == name)


def test_short_run_report_accounts_for_every_record(broker_factory: type[BrokerProcess],
                                                    tmp_path: Path) -> None:
    broker = broker_factory(FAST_GROUPS).start()
    started_ns = time.time_ns()
    report, stdout = run_perf(
        broker.bootstrap, tmp_path / "report.json", "-X", "itest", "-t", "2", "-n", "3",
        "-g", "2", "-p", "1", "-r", "400", "-s", "512", "-R", "0.5", "-w", "0.03",
        "-d", "0.05", "-C", "fetch.max.wait.ms=100", "--monitor-pid", str(broker.proc.pid))
    cfg = report["config"]
    assert cfg["send_rate"] == 400 and cfg["record_size"] == 512 and cfg["topics"] == 2
    assert cfg["topicNames"] == ["__automq_perf_itest_0003_0000000",
                                 "__automq_perf_itest_0003_0000001"]
    assert [p["name"] for p in report["phases"]] == ["prepare", "warmup", "test", "drain"]
    assert report["measuredPhase"] == "test" and report["interrupted"] is False

    test = phase_row(report, "test")
    assert test["acked"] > 0 and test["failed"] == 0
    # two worker processes drew from one send-rate budget: together they kept the asked rate
    assert len(report["cpuWholeRun"]["workerPids"]) == 2
    assert abs(report["produceRateTotal"] - 400) / 400 < 0.03, report["produceRateTotal"]
    # durations are minutes (fractions accepted): 0.03 min of warm-up, 0.05 min measured
    seconds = {p["name"]: (p["endMs"] - p["startMs"]) / 1000 for p in report["phases"]}
    assert abs(seconds["warmup"] - 1.8) < 1.0 and abs(seconds["test"] - 3.0) < 1.0, seconds
    assert test["sent"] == test["acked"]
    assert test["received"] == test["expectedReceived"] == 2 * test["acked"]
    warmup = phase_row(report, "warmup")
    assert warmup["received"] == 2 * warmup["acked"] > 0

    # totals of the measured phase: counts, bytes and every percentile
    assert report["produceCountTotal"] > 0 and report["consumeCountTotal"] > 0
    assert report["produceSizeTotalBytes"] == 512 * report["produceCountTotal"]
    assert report["produceErrorTotal"] == 0
    for prefix in ("produceLatency", "produceLatencyFromSchedule", "endToEndLatency"):
        values = [report[f"{prefix}{p}TotalMicros"] for p in PERCENTILES]
        assert values == sorted(values) and values[0] > 0, prefix
        assert report[f"{prefix}MaxTotalMicros"] >= values[-1]
        assert report[f"{prefix}QuantilesMicros"]["100.0"] == report[f"{prefix}MaxTotalMicros"]
    # scheduled-time latency includes the actual-send latency
    assert report["produceLatencyFromScheduleMeanTotalMicros"] >= \
        report["produceLatencyMeanTotalMicros"]
    e2e_buckets = report["histograms"]["endToEnd"]["buckets"]
    assert sum(e2e_buckets.values()) == report["consumeCountTotal"]

    # per-interval series, one entry per printed line
    n = len(report["timeSecs"])
    assert n >= 4 and all(len(report[k]) == n for k in (
        "phase", "produceRate", "consumeRate", "backlog", "endToEndLatency99thMicros",
        "produceLatencyFromSchedule99thMicros", "cpuToolPercent", "cpuMonitoredPercent"))
    assert stdout.count("[warmup") + stdout.count("[test") + stdout.count("[drain") == n
    assert "Summary (test" in stdout and "p99.99" in stdout
    assert report["cpu"]["monitored"][str(broker.proc.pid)]["seconds"] > 0
    assert report["cpu"]["toolSeconds"] > 0

    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 4 and "<script" not in html

    # the records on the wire: an 8-byte big-endian `st` header of epoch nanoseconds
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "check"})
    c.assign([TopicPartition(cfg["topicNames"][0], p, 0) for p in range(3)])
    msg = None
    while msg is None or msg.error() is not None:
        msg = c.poll(10)
        assert msg is not None
    c.close()
    (key, value), = msg.headers()
    assert key == "st" and len(value) == 8
    assert started_ns < int.from_bytes(value, "big") < time.time_ns()


def test_catch_up_phase_reads_the_backlog(broker_factory: type[BrokerProcess],
                                          tmp_path: Path) -> None:
    broker = broker_factory(FAST_GROUPS).start()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("__automq_perf_stale", 1, 1)])["__automq_perf_stale"].result(30)
    report, stdout = run_perf(
        broker.bootstrap, tmp_path, "--reset", "-X", "cu", "-t", "1",
        "-n", "2", "-g", "2", "-G", "1", "-r", "200", "-w", "0", "-b", "2", "-a", "100")
    assert "__automq_perf_stale" not in admin.list_topics(timeout=10).topics  # --reset
    assert [p["name"] for p in report["phases"]] == ["prepare", "backlog", "catchup", "drain"]
    assert report["measuredPhase"] == "catchup"
    # consumers were paused: after the first interval nothing was read during the backlog
    backlog_reads = [r for r, ph in zip(report["consumeRate"], report["phase"], strict=True)
                     if ph == "backlog"]
    assert len(backlog_reads) >= 3 and sum(backlog_reads[1:]) == 0
    backlog = phase_row(report, "backlog")
    assert backlog["acked"] > 0
    # group 0 sought back to where the backlog began and read all of it; group 1 sought to
    # one second (--group-start-delay) later and skipped the records sent before that
    assert backlog["acked"] < backlog["received"] < 2 * backlog["acked"]
    assert report["consumeCountTotal"] >= backlog["acked"]
    assert report["endToEndLatency50thTotalMicros"] > 0
    assert "[catchup" in stdout and "Summary (catchup" in stdout
