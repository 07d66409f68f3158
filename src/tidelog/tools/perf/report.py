"""Report maths and text: interval figures, phase totals, the console lines and the JSON.

Field names follow the original tool's JSON (`produceRate`, `endToEndLatency99thMicros`,
`produceLatencyQuantilesMicros`, ...) so scripts written for it read ours; what we add
(latency from the scheduled send time, CPU, per-phase accounting, mergeable histograms)
comes under new names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidelog.tools.perf.histogram import SUMMARY_PERCENTILES, Histogram
from tidelog.tools.perf.tally import Tally

MIB = 1 << 20
GIB = 1 << 30
# (JSON prefix, label, Tally attribute)
LATENCIES = (
    ("produceLatency", "Prod", "produce"),
    ("produceLatencyFromSchedule", "Sched", "produce_sched"),
    ("endToEndLatency", "E2E", "e2e"),
)


def latency_figures(h: Histogram) -> dict[str, float]:
    """Mean, Min, 50th ... 9999th, Max in microseconds (the original's suffixes)."""
    values = h.percentiles([p for _, p in SUMMARY_PERCENTILES])
    out: dict[str, float] = {"Mean": round(h.mean(), 3), "Min": h.min()}
    out.update({name: v for (name, _), v in zip(SUMMARY_PERCENTILES, values, strict=True)})
    out["Max"] = h.max()
    return out


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def backlog(groups: int, acked: int, received: int) -> int:
    """Records not yet read by every group, as the original counts it."""
    return max(0, groups * acked - received)


@dataclass
class Interval:
    phase: str
    time_s: float  # since the run started
    seconds: float  # length of this interval
    tally: Tally
    backlog: int
    cpu_tool_pct: float
    cpu_monitored_pct: dict[int, float] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        t, s = self.tally, self.seconds
        out: dict[str, Any] = {
            "timeSecs": round(self.time_s, 3), "phase": self.phase,
            "produceRate": rate(t.acked_total, s), "produceThroughputBps": rate(t.acked_bytes, s),
            "errorRate": rate(t.errors_total, s),
            "consumeRate": rate(t.received_total, s),
            "consumeThroughputBps": rate(t.received_bytes, s),
            "backlog": self.backlog, "cpuToolPercent": round(self.cpu_tool_pct, 2),
        }
        for prefix, _, attr in LATENCIES:
            for name, v in latency_figures(getattr(t, attr)).items():
                out[f"{prefix}{name}Micros"] = v
        return out


@dataclass
class PhaseTotals:
    """One phase by the events in it (the original's cumulative result)."""
    name: str
    seconds: float = 0.0
    tally: Tally = field(default_factory=Tally)
    cpu_monitored_s: dict[int, float] = field(default_factory=dict)

    def add(self, iv: Interval) -> None:
        self.seconds += iv.seconds
        self.tally.add(iv.tally)
        for pid, pct in iv.cpu_monitored_pct.items():
            self.cpu_monitored_s[pid] = self.cpu_monitored_s.get(pid, 0.0) + pct / 100 * iv.seconds

    def figures(self) -> dict[str, Any]:
        t, s = self.tally, self.seconds
        out: dict[str, Any] = {
            "produceRateTotal": rate(t.acked_total, s),
            "produceThroughputTotalBps": rate(t.acked_bytes, s),
            "produceCountTotal": t.acked_total, "produceSizeTotalBytes": t.acked_bytes,
            "produceErrorTotal": t.errors_total,
            "consumeRateTotal": rate(t.received_total, s),
            "consumeThroughputTotalBps": rate(t.received_bytes, s),
            "consumeCountTotal": t.received_total, "consumeSizeTotalBytes": t.received_bytes,
        }
        for prefix, _, attr in LATENCIES:
            h: Histogram = getattr(t, attr)
            for name, v in latency_figures(h).items():
                out[f"{prefix}{name}TotalMicros"] = v
            out[f"{prefix}QuantilesMicros"] = h.quantiles()
        out["cpu"] = {
            "toolSeconds": round(t.cpu_s, 3),
            "toolPercent": round(100 * rate(t.cpu_s, s), 2),
            "monitored": {str(pid): {"seconds": round(cs, 3),
                                     "percent": round(100 * rate(cs, s), 2)}
                          for pid, cs in self.cpu_monitored_s.items()},
        }
        return out


def _ms(us: float) -> str:
    return f"{us / 1000:.3f}"


def interval_line(iv: Interval, progress: str) -> str:
    f = iv.figures()
    cpu = f"CPU {f['cpuToolPercent']:6.1f}%"
    for pid, pct in iv.cpu_monitored_pct.items():
        cpu += f" (pid {pid} {pct:.1f}%)"
    parts = [
        f"{progress} {iv.time_s:7.1f}s", cpu,
        f"Prod {f['produceRate']:10.2f} msg/s {f['produceThroughputBps'] / MIB:7.2f} MiB/s",
        f"err {f['errorRate']:.2f}/s",
        f"Cons {f['consumeRate']:10.2f} msg/s {f['consumeThroughputBps'] / MIB:7.2f} MiB/s",
        f"Backlog {iv.backlog / 1000:.2f} K",
    ]
    for prefix, label, _ in LATENCIES:
        parts.append(
            f"{label} ms avg {_ms(f[prefix + 'MeanMicros'])} p50 {_ms(f[prefix + '50thMicros'])}"
            f" p99 {_ms(f[prefix + '99thMicros'])} p99.9 {_ms(f[prefix + '999thMicros'])}"
            f" max {_ms(f[prefix + 'MaxMicros'])}")
    return " | ".join(parts)


def summary_text(totals: PhaseTotals) -> str:
    f = totals.figures()
    lines = [
        f"Summary ({totals.name}, {totals.seconds:.1f} s)",
        f"  produce  {f['produceRateTotal']:12.2f} msg/s"
        f" {f['produceThroughputTotalBps'] / MIB:9.2f} MiB/s  total {f['produceCountTotal']} msg"
        f" / {f['produceSizeTotalBytes'] / GIB:.3f} GiB / {f['produceErrorTotal']} errors",
        f"  consume  {f['consumeRateTotal']:12.2f} msg/s"
        f" {f['consumeThroughputTotalBps'] / MIB:9.2f} MiB/s  total {f['consumeCountTotal']} msg"
        f" / {f['consumeSizeTotalBytes'] / GIB:.3f} GiB",
    ]
    names = ["Mean", "Min"] + [n for n, _ in SUMMARY_PERCENTILES] + ["Max"]
    heads = ["avg", "min", "p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99", "max"]
    lines.append("  latency (ms)       " + "".join(f"{h:>10}" for h in heads))
    titles = {"produceLatency": "produce (sent)", "produceLatencyFromSchedule": "produce (sched)",
              "endToEndLatency": "end-to-end"}
    for prefix, _, _ in LATENCIES:
        cells = "".join(f"{_ms(f[f'{prefix}{n}TotalMicros']):>10}" for n in names)
        lines.append(f"  {titles[prefix]:<19}{cells}")
    cpu = f["cpu"]
    text = f"  CPU: tool {cpu['toolPercent']:.1f}% of one core ({cpu['toolSeconds']:.1f} s)"
    for pid, m in cpu["monitored"].items():
        text += f"; pid {pid} {m['percent']:.1f}% ({m['seconds']:.1f} s)"
    lines.append(text)
    return "\n".join(lines)


def series(intervals: list[Interval]) -> dict[str, list[Any]]:
    """Per-interval figures as columns, the original's layout."""
    out: dict[str, list[Any]] = {}
    for iv in intervals:
        for key, value in iv.figures().items():
            out.setdefault(key, []).append(value)
    pids = sorted({pid for iv in intervals for pid in iv.cpu_monitored_pct})
    if pids:
        out["cpuMonitoredPercent"] = []
        for iv in intervals:
            out["cpuMonitoredPercent"].append(
                {str(p): round(iv.cpu_monitored_pct.get(p, 0.0), 2) for p in pids})
    return out


def accounting(names: list[str], whole: Tally, groups: int) -> list[dict[str, Any]]:
    """Per send phase: records sent, acknowledged, failed, and received by all groups."""
    return [{"phase": name, "sent": whole.sent[i], "acked": whole.acked[i],
             "failed": whole.failed[i] + whole.send_errors[i], "received": whole.received[i],
             "expectedReceived": whole.acked[i] * groups}
            for i, name in enumerate(names)]
