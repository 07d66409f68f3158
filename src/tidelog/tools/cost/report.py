"""Show the estimates: a text table for people, a JSON document for machines, a PNG bar
chart (matplotlib, the optional `chart` extra)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from tidelog.tools.cost.metrics_source import RunUsage
from tidelog.tools.cost.model import LINE_TITLES, LINES, Estimate
from tidelog.tools.cost.prices import SOURCES, Assumptions, CostInputError, Prices
from tidelog.tools.cost.sizing import Workload


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:g} ms"


def _yes(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def describe(e: Estimate) -> str:
    """One line on what the estimate is made of (its sizing)."""
    s = e.sizing
    if e.key == "kafka":
        return (f"{s['brokers']} x {s['instance_type']} brokers (bound by "
                f"{s['brokers_bound_by']}), {s['ebs_gib']:,.0f} GiB gp3, "
                f"replication factor {s['replication_factor']}")
    if e.key in ("s3_wal", "fsx_wal"):
        head = (f"{s['aku']} AKU (bound by {s['aku_bound_by']}) -> {s['nodes']} x "
                f"{s['instance_type']}; uploads {s['upload_puts_per_s']:g} PUT/s of "
                f"{s['upload_object_mib']:g} MiB")
        if e.key == "s3_wal":
            return (f"{head}; WAL {s['wal_puts_per_s']:g} PUT/s, "
                    f"{s['wal_gets_per_s']:g} GET/s")
        sizes = " + ".join(f"{m} MBps" for m in s["fsx"])
        return (f"{head}; FSx ONTAP Multi-AZ {sizes} ({s['fsx_write_mibps']:g} MiB/s of "
                f"writes), {s['fsx_ssd_gib']:g} GiB SSD each; WAL capacity "
                f"{s['wal_capacity_gib']:g} GiB")
    cross = ", ".join(f"{k} {v:.4f}" for k, v in s["cross_az_mibps"].items()) or "none"
    aku = f", {s['aku']} AKU" if "aku" in s else ""
    fsx = f", FSx {' + '.join(str(m) for m in s['fsx'])} MBps" if "fsx" in s else ""
    return (f"{s['brokers']} broker(s){aku}{fsx}; wrote {s['write_mibps']:.4f} MiB/s, read "
            f"{s['read_mibps']:.4f} MiB/s, WAL {s['wal_mibps']:.4f} MiB/s, "
            f"{s['puts_per_s']:.3f} PUT/s, {s['gets_per_s']:.3f} GET/s; cross-zone MiB/s: "
            f"{cross}")


def format_table(estimates: list[Estimate], latency_ms: float | None) -> str:
    width = max(12, *(len(e.title) for e in estimates)) + 2
    label = 20
    rows = [f"{'USD/month':<{label}}" + "".join(f"{e.title:>{width}}" for e in estimates)]
    for line in LINES:
        rows.append(f"{LINE_TITLES[line]:<{label}}"
                    + "".join(f"{e.lines[line]:>{width},.0f}" for e in estimates))
    rows.append(f"{'total':<{label}}" + "".join(f"{e.total:>{width},.0f}" for e in estimates))
    rows.append(f"{'produce P99':<{label}}" + "".join(f"{_ms(e.p99_ms):>{width}}"
                                                      for e in estimates))
    if latency_ms is not None:
        rows.append(f"{'meets target':<{label}}"
                    + "".join(f"{_yes(e.meets(latency_ms)):>{width}}" for e in estimates))
    return "\n".join(rows)


def format_workload(w: Workload, a: Assumptions) -> str:
    produce, fetch = w.requests_per_s(a)
    how = "given" if w.request_rate is not None else "estimated"
    target = f", produce P99 target {w.latency_ms:g} ms" if w.latency_ms is not None else ""
    return (f"Workload: {w.write_mibps:g} MiB/s written, {w.read_mibps:g} MiB/s read "
            f"(fan-out {w.read_fanout:g}), {w.retention_hours:g} h retention, {w.azs} AZ(s), "
            f"{w.partitions} partitions, {w.message_bytes}-byte messages, "
            f"{produce + fetch:,.0f} requests/s ({how}){target}")


def format_report(w: Workload | None, estimates: list[Estimate], recommended: Estimate | None,
                  p: Prices, a: Assumptions, usage: RunUsage | None = None) -> str:
    out = []
    if usage is not None:
        out.append(f"Run: {usage.seconds:.1f} s over {usage.brokers} broker(s), extrapolated "
                   "to a month at the same rates")
        if usage.missing:
            out.append(f"  not exported (counted as 0): {', '.join(usage.missing)}")
        by_topic = usage.cross_zone_by_topic()
        if any(crossed for crossed, _ in by_topic.values()):
            out.append("  client record bytes crossing zones, by topic: " + ", ".join(
                f"{t} {usage.rate(c) / 2**20:.4f} MiB/s ({c / n:.0%})"
                for t, (c, n) in sorted(by_topic.items(), key=lambda kv: -kv[1][0]) if c))
    if w is not None:
        out.append(format_workload(w, a))
    elif usage is not None:
        out.append("Nothing was produced during the run: no workload to model.")
    out.append("")
    out.extend(f"  {e.title}: {describe(e)}" for e in estimates)
    out.append("")
    out.append(format_table(estimates, w.latency_ms if w else None))
    out.append("")
    modelled = [e for e in estimates if e.key == "kafka"]
    if recommended is not None:
        why = (f"the cheapest that meets the {w.latency_ms:g} ms P99 target"
               if w is not None and w.latency_ms is not None else "the cheapest")
        versus = (f" ({modelled[0].total / recommended.total:.1f}x less than "
                  f"{modelled[0].title})" if modelled and recommended.total > 0
                  and recommended.key != "kafka" else "")
        out.append(f"Recommended: {recommended.title}, {why}{versus}.")
    elif w is not None and w.latency_ms is not None:
        out.append(f"No architecture here meets a {w.latency_ms:g} ms produce P99.")
    out.append(f"Prices: {p.version} ({p.region}, as of {p.as_of}, {p.currency}); "
               "--show-prices for sources, --prices FILE to override.")
    return "\n".join(out)


def format_prices(p: Prices, a: Assumptions) -> str:
    out = [f"Price table {p.version} ({p.region}, as of {p.as_of}, {p.currency})"]
    for key, value in asdict(p).items():
        src = SOURCES.get(key)
        tail = f"  [{src.status}] {src.note}; {src.url}" if src else ""
        out.append(f"  {key} = {value}{tail}")
    out.append("Assumptions (docs/cost.md says why)")
    out.extend(f"  {key} = {value}" for key, value in asdict(a).items())
    return "\n".join(out)


def to_json(w: Workload | None, estimates: list[Estimate], recommended: Estimate | None,
            p: Prices, a: Assumptions, usage: RunUsage | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "prices": asdict(p),
        "price_sources": {k: asdict(v) for k, v in SOURCES.items()},
        "assumptions": asdict(a),
        "architectures": [
            {"key": e.key, "title": e.title, "lines": dict(e.lines), "total": e.total,
             "sizing": e.sizing, "produce_p99_ms": e.p99_ms,
             "meets_target": e.meets(w.latency_ms if w else None)}
            for e in estimates],
        "recommended": recommended.key if recommended else None,
    }
    if w is not None:
        produce, fetch = w.requests_per_s(a)
        doc["workload"] = {**asdict(w), "read_mibps": w.read_mibps,
                           "requests_per_s": produce + fetch}
    if usage is not None:
        doc["run"] = usage.to_dict()
    return doc


def write_chart(path: str | Path, estimates: list[Estimate], title: str) -> None:
    """A stacked bar per architecture, one colour per cost line, the total on top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import StrMethodFormatter
    except ImportError as exc:
        raise CostInputError("--chart needs matplotlib: pip install 'tidelog[chart]'") from exc
    fig, ax = plt.subplots(figsize=(2.2 + 2.0 * len(estimates), 5.0), dpi=100)
    names = [e.title for e in estimates]
    bottom = [0.0] * len(estimates)
    for line in LINES:
        values = [e.lines[line] for e in estimates]
        ax.bar(names, values, bottom=bottom, label=LINE_TITLES[line])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, e in enumerate(estimates):
        ax.annotate(f"${e.total:,.0f}", (i, e.total), ha="center", va="bottom",
                    xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("USD per month")
    ax.set_title(title)
    ax.set_ylim(0, max(bottom + [1.0]) * 1.12)
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.legend(loc="upper right")
    fig.tight_layout()
    try:
        fig.savefig(str(path), format="png")
    except OSError as exc:
        raise CostInputError(f"cannot write {path}: {exc}") from exc
    finally:
        plt.close(fig)
