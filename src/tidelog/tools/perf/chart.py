"""A self-contained HTML page (inline SVG, no scripts) charting a report: throughput and
latency over time, and latency by percentile (HdrHistogram's plot, where the tail shows)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

W, H = 900, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 30, 40
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
PHASE_FILL = {"warmup": "#f3f3f3", "backlog": "#fff4e0", "catchup": "#e8f4ff", "drain": "#f6f6f6"}

Line = tuple[str, Sequence[float], Sequence[float]]  # label, xs, ys


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def line_chart(title: str, lines: list[Line], x_label: str, y_label: str, log_y: bool = False,
               x_ticks: list[tuple[float, str]] | None = None,
               bands: list[tuple[float, float, str]] | None = None) -> str:
    """One SVG chart. `x_ticks` replaces the automatic x ticks; `bands` shades x ranges."""
    pts = [(x, y) for _, xs, ys in lines for x, y in zip(xs, ys, strict=False)
           if not (log_y and y <= 0)]
    if not pts:
        return f"<h3>{html.escape(title)}</h3><p>no data</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if log_y:
        y0, y1 = math.log10(y0), math.log10(y1)
        y0, y1 = math.floor(y0), max(math.ceil(y1), math.floor(y0) + 1)
    else:
        y0, y1 = 0.0, (y1 * 1.1 if y1 > 0 else 1.0)
    if x1 == x0:
        x1 = x0 + 1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        v = math.log10(y) if log_y else y
        return TOP + ph - (v - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    for start, end, name in bands or []:
        a, b = sx(max(start, x0)), sx(min(end, x1))
        if b > a:
            out.append(f'<rect x="{a:.1f}" y="{TOP}" width="{b - a:.1f}" height="{ph}" '
                       f'fill="{PHASE_FILL.get(name, "#ffffff")}"/>')
            out.append(f'<text x="{a + 3:.1f}" y="{TOP + 12}" fill="#888">'
                       f'{html.escape(name)}</text>')
    y_values = ([10.0 ** e for e in range(int(y0), int(y1) + 1)] if log_y
                else _nice_ticks(y0, y1))
    for v in y_values:
        y = sy(v)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    ticks = x_ticks if x_ticks is not None else [(v, _fmt(v)) for v in _nice_ticks(x0, x1, 8)]
    for v, label in ticks:
        if x0 <= v <= x1:
            x = sx(v)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" '
                       f'stroke="#eee"/>')
            out.append(f'<text x="{x:.1f}" y="{TOP + ph + 15}" text-anchor="middle">'
                       f'{html.escape(label)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 5}" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    out.append(f'<text x="14" y="{TOP + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {TOP + ph / 2})">{html.escape(y_label)}</text>')
    for i, (label, xs, ys) in enumerate(lines):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=False)
                          if not (log_y and y <= 0))
        if coords:
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" '
                       f'stroke-width="1.5"/>')
        ly = TOP + 14 + i * 16
        out.append(f'<line x1="{LEFT + pw + 10}" x2="{LEFT + pw + 30}" y1="{ly - 4}" '
                   f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{LEFT + pw + 35}" y="{ly}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _phase_bands(report: dict[str, Any]) -> list[tuple[float, float, str]]:
    start = report.get("startMs", 0)
    return [((p["startMs"] - start) / 1000, (p["endMs"] - start) / 1000, p["name"])
            for p in report.get("phases", []) if p.get("endMs") is not None]


def _percentile_lines(report: dict[str, Any]) -> tuple[list[Line], list[tuple[float, str]]]:
    """Latency by percentile, x = log10(1 / (1 - p)): 0 at 0%, 2 at 99%, 4 at 99.99%."""
    lines: list[Line] = []
    for key, label in (("produceLatencyQuantilesMicros", "produce (sent)"),
                       ("produceLatencyFromScheduleQuantilesMicros", "produce (sched)"),
                       ("endToEndLatencyQuantilesMicros", "end-to-end")):
        q = report.get(key) or {}
        xs, ys = [], []
        for p_text, us in sorted(q.items(), key=lambda kv: float(kv[0])):
            p = float(p_text)
            if p >= 100.0 or us <= 0:
                continue
            xs.append(math.log10(100.0 / (100.0 - p)))
            ys.append(us / 1000)
        if xs:
            lines.append((label, xs, ys))
    ticks = [(float(math.log10(100 / (100 - p))), f"{p:g}%")
             for p in (0, 50, 90, 99, 99.9, 99.99, 99.999)]
    return lines, ticks


def render(report: dict[str, Any]) -> str:
    """The report's HTML page."""
    xs = report.get("timeSecs", [])
    bands = _phase_bands(report)
    mib = float(1 << 20)
    prod = [v / mib for v in report.get("produceThroughputBps", [])]
    cons = [v / mib for v in report.get("consumeThroughputBps", [])]
    throughput = line_chart("Throughput",
                            [("produce MiB/s", xs, prod), ("consume MiB/s", xs, cons)],
                            "seconds", "MiB/s", bands=bands)
    rates = line_chart(
        "Message rate", [("produce msg/s", xs, report.get("produceRate", [])),
                         ("consume msg/s", xs, report.get("consumeRate", []))],
        "seconds", "msg/s", bands=bands)
    lat_lines: list[Line] = []
    for prefix, label in (("produceLatency", "produce"), ("produceLatencyFromSchedule", "sched"),
                          ("endToEndLatency", "e2e")):
        for pct in ("50th", "99th"):
            values = report.get(f"{prefix}{pct}Micros", [])
            lat_lines.append((f"{label} p{pct[:-2]}", xs, [v / 1000 for v in values]))
    latency = line_chart("Latency over time", lat_lines, "seconds", "ms (log)", log_y=True,
                         bands=bands)
    plines, pticks = _percentile_lines(report)
    by_pct = line_chart(f"Latency by percentile ({report.get('measuredPhase', '')})", plines,
                        "percentile", "ms (log)", log_y=True, x_ticks=pticks)
    cfg = report.get("config", {})
    title = (f"tidelog perf: {cfg.get('bootstrap_server', '')}, {cfg.get('topics', '')} x "
             f"{cfg.get('partitions_per_topic', '')} partitions, {cfg.get('record_size', '')} B, "
             f"{cfg.get('send_rate', '')} msg/s")
    summary = html.escape(report.get("summaryText", ""))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title></head>\n<body style=\"font-family: sans-serif\">\n<h2>{html.escape(title)}"
            f"</h2>\n<pre>{summary}</pre>\n{throughput}\n{rates}\n{latency}\n{by_pct}\n"
            f"</body></html>\n")
