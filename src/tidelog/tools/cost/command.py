"""`tidelog cost`: the arguments `cli.py` parsed, turned into a report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from tidelog.tools.cost.measured import price_run, workload_of
from tidelog.tools.cost.metrics_source import RunUsage, ScrapeError, measure
from tidelog.tools.cost.model import Estimate, estimate_all, recommend
from tidelog.tools.cost.prices import Assumptions, CostInputError, Prices, load_overrides
from tidelog.tools.cost.report import format_prices, format_report, to_json, write_chart
from tidelog.tools.cost.sizing import Workload


def _workload(args: argparse.Namespace) -> Workload:
    return Workload(write_mibps=args.write_mbps, read_fanout=args.read_fanout,
                    retention_hours=args.retention_hours, azs=args.azs,
                    partitions=args.partitions, message_bytes=args.message_bytes,
                    latency_ms=args.latency_ms, request_rate=args.request_rate)


def _from_metrics(args: argparse.Namespace, base: Workload, p: Prices, a: Assumptions,
                  err: TextIO) -> tuple[Workload | None, list[Estimate], RunUsage]:
    def started() -> None:
        print(f"tidelog cost: scraped {len(args.from_metrics)} endpoint(s); scraping again "
              f"in {args.interval:g} s", file=err, flush=True)

    usage = measure(args.from_metrics, args.interval, on_first=started)
    estimates = [price_run(usage, base, args.wal, p, a)]
    w = workload_of(usage, base)
    if w is not None:
        estimates += estimate_all(w, p, a)
    return w, estimates, usage


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        p, a = load_overrides(args.prices) if args.prices else (Prices(), Assumptions())
        if args.show_prices:
            print(format_prices(p, a), file=out)
            return 0
        base = _workload(args)
        usage: RunUsage | None = None
        w: Workload | None = base
        if args.from_metrics:
            w, estimates, usage = _from_metrics(args, base, p, a, err)
            modelled = [e for e in estimates if e.key != "measured"]
            best = recommend(modelled, base.latency_ms) if modelled else None
        else:
            estimates = estimate_all(base, p, a)
            best = recommend(estimates, base.latency_ms)
        if args.chart:
            title = "measured run, per month" if usage else "monthly cost"
            write_chart(args.chart, estimates, title)
    except CostInputError as exc:
        print(f"tidelog cost: {exc}", file=err)
        return 1 if isinstance(exc, ScrapeError) else 2
    if args.json:
        json.dump(to_json(w, estimates, best, p, a, usage), out, indent=2)
        out.write("\n")
    else:
        print(format_report(w, estimates, best, p, a, usage), file=out)
    return 0
