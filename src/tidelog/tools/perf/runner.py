"""The coordinator: topics, workers, the phases of a run, the interval loop, the report.

Phases, as the original runs them: *prepare* (topics created, consumers joined, every
partition probed until consumers see it), *warmup* (send rate ramps from 1 msg/s to the
target over the first half, then holds), then either *test* (the measured phase) or, with
`--backlog-duration`, *backlog* (consumers paused while producers go on) and *catchup*
(consumers seek back to where the backlog began and the phase ends when any of them reads
a record sent after the backlog ended). Our addition: *drain*, after producers stop, until
every record sent in the measured phase was read by every group (or reading stops), so the
per-phase accounting in the report is exact.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from tidelog.tools.perf import chart, clientconf, topics
from tidelog.tools.perf.config import MAX_CONSUME_RATE, PerfConfig, PerfConfigError
from tidelog.tools.perf.pool import WorkerPool
from tidelog.tools.perf.ratelimit import MIN_RATE, SendSchedule, TokenBucket, ramp_rate
from tidelog.tools.perf.report import (
    Interval,
    PhaseTotals,
    accounting,
    backlog,
    interval_line,
    series,
    summary_text,
)
from tidelog.tools.perf.shared import SharedState
from tidelog.tools.perf.tally import Tally
from tidelog.tools.perf.worker import ConsumerSpec, ProducerSpec, WorkerSpec

log = logging.getLogger("tidelog.perf")
READY_TIMEOUT_S = 120.0
PROBE_EVERY_S = 1.0
DRAIN_IDLE_S = 5.0
DRAIN_MAX_S = 60.0


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a local process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def plan_workers(cfg: PerfConfig, topic_list: list[topics.Topic], processes: int,
                 producer_settings: dict[str, str], consumer_base: dict[str, str],
                 ) -> list[WorkerSpec]:
    """Spread producers and consumers round-robin over `processes` workers."""
    producers = [ProducerSpec(t.name, t.partitions)
                 for t in topic_list for _ in range(cfg.producers_per_topic)]
    consumers: list[ConsumerSpec] = []
    for g in range(cfg.groups_per_topic):
        for t in topic_list:
            settings = {**consumer_base, "group.id": topics.group_id(t.name, g)}
            consumers.extend(ConsumerSpec(t.name, g, settings)
                             for _ in range(cfg.consumers_per_group))
    clients: list[ProducerSpec | ConsumerSpec] = [*producers, *consumers]
    n = max(1, min(processes, len(clients)))
    slots: list[tuple[list[ProducerSpec], list[ConsumerSpec]]] = [([], []) for _ in range(n)]
    for i, client in enumerate(clients):
        if isinstance(client, ProducerSpec):
            slots[i % n][0].append(client)
        else:
            slots[i % n][1].append(client)
    return [WorkerSpec(
        index=i, producer_settings=producer_settings, producers=ps, consumers=cs,
        record_size=cfg.record_size, random_ratio=cfg.random_ratio,
        random_pool_size=cfg.random_pool_size, values_file=cfg.values_file,
        sticky_batch_bytes=clientconf.sticky_batch_bytes(cfg.producer_configs,
                                                         cfg.common_configs),
        sticky_linger_ms=clientconf.sticky_linger_ms(cfg.producer_configs, cfg.common_configs),
        poll_records=clientconf.max_poll_records(cfg.consumer_configs, cfg.common_configs),
    ) for i, (ps, cs) in enumerate(slots)]


class PerfRun:
    def __init__(self, cfg: PerfConfig, out: TextIO = sys.stdout) -> None:
        if cfg.backlog_duration_s > 0 and cfg.groups_per_topic == 0:
            raise PerfConfigError("--backlog-duration needs consumers (--groups-per-topic >= 1)")
        self.cfg = cfg
        self.out = out
        self.ctx = multiprocessing.get_context("spawn")
        self.state = SharedState(self.ctx)
        self.schedule = SendSchedule(self.ctx)
        self.bucket = (TokenBucket(self.ctx, cfg.max_consume_record_rate, time.monotonic_ns())
                       if cfg.max_consume_record_rate < MAX_CONSUME_RATE else None)
        self.start_ms = int(time.time() * 1000)
        self.start_mono = time.monotonic()
        self.phases: list[dict[str, Any]] = []
        self.intervals: list[Interval] = []
        self.whole = Tally()  # every delta of the run: counts only (no histograms)
        self.pool: WorkerPool | None = None
        self.topic_list: list[topics.Topic] = []
        self._last: list[Tally] = []
        self._last_time = time.monotonic()
        self._last_cpu = time.process_time()
        self._last_monitored = {pid: proc_cpu_seconds(pid) for pid in cfg.monitor_pids}
        self._acked_since_reset = 0
        self._received_since_reset = 0
        self.notes: list[str] = []
        self._current: PhaseTotals | None = None  # the phase being collected

    # ---- phases ---------------------------------------------------------------------

    def _begin(self, name: str) -> None:
        now_ns = time.time_ns()
        if self.phases:
            self.phases[-1]["endMs"] = now_ns // 1_000_000
        self.state.begin_phase(now_ns)
        self.phases.append({"name": name, "startMs": now_ns // 1_000_000, "endMs": None})

    def _reset_stats(self) -> None:
        self._acked_since_reset = 0
        self._received_since_reset = 0

    def run(self) -> dict[str, Any]:
        """Run every phase and write the report; returns it."""
        cfg = self.cfg
        self._begin("prepare")
        measured: PhaseTotals | None = None
        interrupted = False
        try:
            self._prepare()
            measured = self._main_phases()
            self._drain(measured.name)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: stopping and writing what was measured")
            current = self._current
            if measured is None and current is not None and current.name in ("test", "catchup"):
                measured = current  # the measured phase so far
        finally:
            self.state.set_producing(False)
            if self.phases and self.phases[-1]["endMs"] is None:
                self.phases[-1]["endMs"] = int(time.time() * 1000)
            if self.pool is not None:
                finals = self.pool.close()
                for i, final in enumerate(finals):
                    if isinstance(final, Tally) and i < len(self._last):
                        self.whole.add(final.minus(self._last[i]), histograms=False)
        report = self._report(measured, interrupted)
        self._write(report)
        log.info("run %s: %s", "interrupted" if interrupted else "done", cfg.output or "")
        return report

    def _prepare(self) -> None:
        cfg = self.cfg
        admin = clientconf.admin_settings(cfg.bootstrap_server, cfg.common_configs)
        if cfg.reset:
            log.info("Deleting all test topics...")
            log.info("Deleted %d test topics", topics.delete_perf_topics(admin))
        if cfg.catchup_topic_prefix:
            self.topic_list = topics.find_topics(admin, cfg.catchup_topic_prefix)
            if not self.topic_list:
                raise RuntimeError(f"no catch-up topics with prefix {cfg.catchup_topic_prefix!r}")
        elif cfg.reuse_topics and (found := topics.find_topics(admin, cfg.topic_prefix)):
            self.topic_list = found
        else:
            log.info("Creating %d topics of %d partitions...", cfg.topics,
                     cfg.partitions_per_topic)
            self.topic_list = topics.create_topics(admin, cfg.topic_prefix, cfg.topics,
                                                   cfg.partitions_per_topic, cfg.topic_configs)
        producer = clientconf.producer_settings(cfg.bootstrap_server, cfg.common_configs,
                                                cfg.producer_configs, self.notes)
        consumer = clientconf.consumer_settings(cfg.bootstrap_server, cfg.common_configs,
                                                cfg.consumer_configs, "", self.notes)
        for note in sorted(set(self.notes)):
            log.info("client settings: %s", note)
        processes = cfg.processes or os.cpu_count() or 1
        specs = plan_workers(cfg, self.topic_list, processes, producer, consumer)
        log.info("Starting %d worker processes (%d producers, %d consumers)...", len(specs),
                 sum(len(s.producers) for s in specs), sum(len(s.consumers) for s in specs))
        self.pool = WorkerPool(self.ctx, specs, self.schedule, self.bucket, self.state)
        self._last = [Tally() for _ in specs]
        self._wait_assigned()
        if cfg.await_topic_ready and not cfg.catchup_topic_prefix:
            self._await_topics_ready()
        self._interval("prepare")  # moves the baselines past the probes

    def _wait_assigned(self) -> None:
        assert self.pool is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            status = self.pool.call("status")
            joined = sum(s["assigned"] for s in status)
            total = sum(s["consumers"] for s in status)
            if joined >= total:
                log.info("All %d consumers joined their groups", total)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {joined} of {total} consumers got an assignment")
            time.sleep(0.2)

    def _await_topics_ready(self) -> None:
        """Probe every partition until consumers have seen each one (without consumers:
        until every probe is acknowledged). Probes again after PROBE_EVERY_S, once the
        last round is acknowledged (a slow broker is not flooded with rounds)."""
        assert self.pool is not None
        expected = sum(t.partitions for t in self.topic_list)
        has_consumers = self.cfg.groups_per_topic > 0
        self.pool.call("collect_seen", True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        probes = sum(self.pool.call("probe"))
        last_probe = last_log = time.monotonic()
        try:
            while time.monotonic() < deadline:
                status = self.pool.call("status")
                answered = sum(s["probe_acked"] + s["probe_failed"] for s in status)
                if has_consumers:
                    seen = {tuple(x) for s in status for x in s["seen"]}
                    done = len(seen) >= expected
                else:
                    done = sum(s["probe_acked"] for s in status) >= probes
                if done:
                    log.info("Topics are ready (%d partitions)", expected)
                    return
                now = time.monotonic()
                if answered >= probes and now - last_probe >= PROBE_EVERY_S:
                    probes += sum(self.pool.call("probe"))
                    last_probe = now
                if now - last_log >= 5:
                    last_log = now
                    log.info("Waiting for topics to be ready... %d probes sent, %d answered, "
                             "%d of %d partitions seen", probes, answered,
                             len(seen) if has_consumers else 0, expected)
                time.sleep(0.1)
            raise RuntimeError(f"topics not ready after {READY_TIMEOUT_S:.0f}s")
        finally:
            self.pool.call("collect_seen", False)

    def _main_phases(self) -> PhaseTotals:
        cfg = self.cfg
        if cfg.catchup_topic_prefix:
            return self._catch_up(backlog_start_ms=None)
        self._reset_stats()
        warmup_s = cfg.warmup_duration_min * 60
        if warmup_s > 0:
            self._begin("warmup")
            log.info("Warming up for %g minutes...", cfg.warmup_duration_min)
            t0 = time.monotonic()
            self._start_producing(MIN_RATE)
            self._collect("warmup", warmup_s, ramp=(t0, t0 + warmup_s / 2))
        if cfg.backlog_duration_s > 0:
            if warmup_s <= 0:
                self._start_producing(cfg.send_rate)
            log.info("Pausing consumers for %g seconds to build up backlog...",
                     cfg.backlog_duration_s)
            self._begin("backlog")
            assert self.pool is not None
            self.pool.call("pause")
            backlog_start_ms = int(time.time() * 1000)
            self._collect("backlog", cfg.backlog_duration_s)
            return self._catch_up(backlog_start_ms)
        self._begin("test")
        self._reset_stats()
        if warmup_s <= 0:
            self._start_producing(cfg.send_rate)
        log.info("Running test for %g minutes...", cfg.test_duration_min)
        return self._collect("test", cfg.test_duration_min * 60)

    def _catch_up(self, backlog_start_ms: int | None) -> PhaseTotals:
        """Consumers of a share of the topics seek to the backlog's start (group i
        `--group-start-delay` later per index) and read until they reach now."""
        cfg = self.cfg
        assert self.pool is not None
        backlog_end_ns = time.time_ns()
        names = [t.name for t in self.topic_list]
        share = max(1, min(len(names), math.ceil(len(names) * cfg.consumers_during_catchup / 100)))
        resumed = set(random.sample(names, share))
        if backlog_start_ms is None:  # existing topics: from backlog-duration ago, or the start
            base = (int(time.time() * 1000 - cfg.backlog_duration_s * 1000)
                    if cfg.backlog_duration_s > 0 else None)
        else:
            base = backlog_start_ms
        if backlog_start_ms is None:
            self.pool.call("pause")  # only the chosen share of topics reads
        delay_ms = int(cfg.group_start_delay_s * 1000)
        stamps = {g: (None if base is None else base + g * delay_ms)
                  for g in range(cfg.groups_per_topic)}
        self._begin("catchup")
        self._reset_stats()
        log.info("Resuming consumers of %d of %d topics from %s", share, len(names),
                 "the beginning" if base is None else f"{base} ms")
        self.pool.call("catchup", resumed, stamps)
        self._start_producing(cfg.send_rate_during_catchup)
        return self._collect("catchup", None, until=lambda t: t.max_st >= backlog_end_ns,
                             catchup_end_ns=backlog_end_ns)

    def _start_producing(self, rate: float) -> None:
        self.schedule.set_rate(rate, time.monotonic_ns())
        self.state.set_producing(True)

    def _drain(self, measured: str) -> None:
        """Stop producers, then read until every group has every record sent in the
        measured phase, or reading stops."""
        assert self.pool is not None
        self.state.set_producing(False)
        self._begin("drain")
        left = sum(self.pool.call("flush", 30.0))
        if left:
            log.warning("%d records still unacknowledged after 30 s", left)
        if self.cfg.groups_per_topic == 0:
            return
        idx = [p["name"] for p in self.phases].index(measured)
        groups = self.cfg.groups_per_topic
        complete = measured != "catchup" and self.cfg.consumers_during_catchup == 100
        start = time.monotonic()
        last_progress = [start, self.whole.received_total]

        def done(_t: Tally) -> bool:
            now = time.monotonic()
            if self.whole.received_total != last_progress[1]:
                last_progress[:] = [now, self.whole.received_total]
            if complete and self.whole.received[idx] >= self.whole.acked[idx] * groups:
                return True
            return now - last_progress[0] >= DRAIN_IDLE_S or now - start >= DRAIN_MAX_S

        self._collect("drain", None, until=done)

    # ---- intervals ------------------------------------------------------------------

    def _collect(self, name: str, duration_s: float | None,
                 until: Callable[[Tally], bool] | None = None,
                 ramp: tuple[float, float] | None = None,
                 catchup_end_ns: int | None = None) -> PhaseTotals:
        """Print an interval line every reporting interval until `duration_s` has passed
        or `until(interval tally)` holds; returns the phase's totals."""
        totals = PhaseTotals(name)
        self._current = totals
        every = self.cfg.reporting_interval_s
        start = time.monotonic()
        end = start + duration_s if duration_s is not None else None
        next_tick = start + every
        last_ramp = 0.0
        while True:
            now = time.monotonic()
            if ramp is not None and now - last_ramp >= 0.1:
                last_ramp = now
                self.schedule.set_rate(ramp_rate(now, ramp, self.cfg.send_rate),
                                       time.monotonic_ns())
            tick = min(next_tick, end) if end is not None else next_tick
            if now < tick:
                time.sleep(min(0.1, tick - now))
                continue
            iv = self._interval(name)
            self.intervals.append(iv)
            totals.add(iv)
            self._print(interval_line(iv, self._progress(name, now - start, duration_s,
                                                         catchup_end_ns)))
            if (end is not None and now >= end) or (until is not None and until(iv.tally)):
                return totals
            while next_tick <= now:
                next_tick += every

    def _progress(self, name: str, elapsed: float, duration: float | None,
                  catchup_end_ns: int | None) -> str:
        if duration:
            return f"[{name:<7} {min(100.0, 100 * elapsed / duration):5.1f}%]"
        if catchup_end_ns is not None:
            behind = (catchup_end_ns - self.whole.max_st) / 1e9
            return f"[{name:<7} {max(0.0, behind):6.1f}s to go]"
        return f"[{name:<7} {elapsed:6.1f}s]"

    def _interval(self, phase: str) -> Interval:
        assert self.pool is not None
        cumulative: list[Tally] = self.pool.call("tally")
        now = time.monotonic()
        delta = Tally()
        for i, cum in enumerate(cumulative):
            delta.add(cum.minus(self._last[i]))
            self._last[i] = cum
        cpu = time.process_time()
        delta.cpu_s += cpu - self._last_cpu
        self._last_cpu = cpu
        seconds = max(1e-9, now - self._last_time)
        self._last_time = now
        monitored: dict[int, float] = {}
        for pid, before in self._last_monitored.items():
            after = proc_cpu_seconds(pid)
            if before is not None and after is not None:
                monitored[pid] = 100 * (after - before) / seconds
            self._last_monitored[pid] = after
        self.whole.add(delta, histograms=False)
        self._acked_since_reset += delta.acked_total
        self._received_since_reset += delta.received_total
        return Interval(
            phase=phase, time_s=now - self.start_mono, seconds=seconds, tally=delta,
            backlog=backlog(self.cfg.groups_per_topic, self._acked_since_reset,
                            self._received_since_reset),
            cpu_tool_pct=100 * delta.cpu_s / seconds, cpu_monitored_pct=monitored)

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    # ---- report ---------------------------------------------------------------------

    def _report(self, measured: PhaseTotals | None, interrupted: bool) -> dict[str, Any]:
        cfg = self.cfg
        names = [p["name"] for p in self.phases]
        report: dict[str, Any] = {
            "tool": "tidelog perf", "reportVersion": 1,
            "config": {**cfg.to_json(), "topicNames": [t.name for t in self.topic_list]},
            "startMs": self.start_ms, "endMs": int(time.time() * 1000),
            "interrupted": interrupted,
            "measuredPhase": measured.name if measured else None,
            "phases": self.phases,
        }
        if measured is not None:
            report.update(measured.figures())
            report["histograms"] = {"produce": measured.tally.produce.to_sparse(),
                                    "produceFromSchedule": measured.tally.produce_sched.to_sparse(),
                                    "endToEnd": measured.tally.e2e.to_sparse()}
            report["summaryText"] = summary_text(measured)
        report.update(series(self.intervals))
        report["accounting"] = accounting(names, self.whole, cfg.groups_per_topic)
        report["cpuWholeRun"] = {"toolSeconds": round(self.whole.cpu_s, 3),
                                 "workerPids": self.pool.pids if self.pool else []}
        report["clientNotes"] = sorted(set(self.notes))
        return report

    def _write(self, report: dict[str, Any]) -> None:
        if "summaryText" in report:
            self._print(report["summaryText"])
        path = Path(self.cfg.output or datetime.now().strftime("perf-%Y-%m-%d-%H-%M-%S.json"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        html_path = path.with_suffix(".html")
        html_path.write_text(chart.render(report))
        log.info("Saved results to %s and %s", path, html_path)
