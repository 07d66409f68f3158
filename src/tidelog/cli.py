"""`tidelog` command line: `tidelog server [--config FILE] [--set key=value ...]`,
`tidelog groups list|describe GROUP [--bootstrap-server HOST:PORT]`,
`tidelog transactions [--bootstrap-server HOST:PORT]`,
`tidelog topics list|describe|create|delete|alter`, `tidelog configs describe|alter`,
`tidelog cost [--from-metrics URL]`,
`tidelog status [--metrics-url URL]`,
`tidelog cluster up|status|kill NODE|start NODE|down [--dir DIR]`."""

from __future__ import annotations

import argparse
import logging
import sys

from tidelog.config import Config, ConfigError


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise ConfigError(f"--set needs key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["perf"]:  # its own parser: `tidelog perf --help` lists every flag
        from tidelog.tools.perf.main import main as perf_main

        return perf_main(args_in[1:])
    parser = argparse.ArgumentParser(prog="tidelog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("server", help="run a broker")
    srv.add_argument("--config", help="server.properties file")
    srv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting (repeatable)")
    srv.add_argument("--ready-file", help="write the bound port here once serving")
    srv.add_argument("--metrics-ready-file",
                     help="write the bound metrics port (0: metrics off) here once serving")
    grp = sub.add_parser("groups", help="list consumer groups, or describe one with its lag")
    grp.add_argument("action", choices=["list", "describe"])
    grp.add_argument("group", nargs="?")
    grp.add_argument("--bootstrap-server", default="localhost:9092")
    txn = sub.add_parser("transactions", help="open transactions and their LSO lag")
    txn.add_argument("--bootstrap-server", default="localhost:9092")
    sub.add_parser("perf", help="load test any Kafka-compatible broker (AutoMQ's perf tool "
                                "flags; see `tidelog perf --help`)")
    from tidelog.tools import topics_command

    topics_command.add_commands(sub)
    from tidelog.tools import cluster, partitions

    cluster.add_commands(sub)
    partitions.add_commands(sub)
    st = sub.add_parser("status", help="a broker's key figures, from its metrics endpoint")
    st.add_argument("--metrics-url", default="http://localhost:9464/metrics")
    st.add_argument("--interval", type=float, default=1.0,
                    help="seconds between the two scrapes rates come from (0: totals only)")
    st.add_argument("--top", type=int, default=10, help="rows per table")
    cost = sub.add_parser("cost", help="cluster size, WAL choice and monthly cost: 3-AZ Kafka "
                          "vs diskless (S3 WAL, FSx WAL); or price a run from its metrics")
    cost.add_argument("--write-mbps", type=float, default=100.0, help="MiB/s produced")
    cost.add_argument("--read-fanout", type=float, default=1.0, help="bytes read per byte written")
    cost.add_argument("--retention-hours", type=float, default=72.0)
    cost.add_argument("--azs", type=int, default=3, help="availability zones")
    cost.add_argument("--partitions", type=int, default=1000)
    cost.add_argument("--message-bytes", type=int, default=1024)
    cost.add_argument("--latency-ms", type=float, help="produce P99 target")
    cost.add_argument("--request-rate", type=float, help="requests/s (default: estimated)")
    cost.add_argument("--prices", metavar="FILE", help="JSON or TOML overriding prices/assumptions")
    cost.add_argument("--show-prices", action="store_true", help="print the price table, sources")
    cost.add_argument("--json", action="store_true", help="machine-readable output")
    cost.add_argument("--chart", metavar="PNG", help="write a bar chart (needs tidelog[chart])")
    cost.add_argument("--from-metrics", action="append", metavar="URL",
                      help="a broker's metrics endpoint (repeat per broker): price a real run")
    cost.add_argument("--interval", type=float, default=60.0, help="seconds between scrapes")
    cost.add_argument("--wal", choices=["fsx", "s3"], default="fsx", help="the run's WAL")
    args = parser.parse_args(argv)
    if args.command == "groups":
        return _groups(args)
    if args.command == "transactions":
        return _transactions(args)
    if args.command in ("topics", "configs"):
        return topics_command.run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "cost":
        return _cost(args)
    if args.command == "partitions":
        return partitions.run(args)
    if args.command == "cluster":
        return cluster.run(args)
    try:
        config = Config.load(args.config, _overrides(args.set))
    except (ConfigError, OSError) as exc:
        print(f"tidelog: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.get_str("log.level").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from tidelog.controller.membership import NodeIdInUse
    from tidelog.metadata.base import MetadataError
    from tidelog.server import serve

    try:
        return uvloop.run(serve(config, args.ready_file, args.metrics_ready_file))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # e.g. the port is taken, the data directory is not writable
        logging.getLogger("tidelog").error("cannot start: %s", exc)
        return 1
    except (MetadataError, NodeIdInUse) as exc:  # metadata.uri unusable, node.id taken
        logging.getLogger("tidelog").error("cannot start: %s", exc)
        return 2
    except ValueError as exc:  # a setting the broker only checks when it applies it
        logging.getLogger("tidelog").error("cannot start: invalid configuration: %s", exc)
        return 2


def _groups(args: argparse.Namespace) -> int:
    from tidelog.tools import groups

    try:
        if args.action == "list":
            from tidelog.tools.wire import KafkaWireClient

            with KafkaWireClient(args.bootstrap_server) as client:
                for group_id, state, kind in groups.list_groups(client):
                    print(f"{group_id}\t{state}\t{kind or '-'}")
            return 0
        if not args.group:
            print("tidelog groups describe: name a GROUP", file=sys.stderr)
            return 2
        state, rows = groups.describe(args.bootstrap_server, args.group)
        groups.print_describe(sys.stdout, args.group, state, rows)
        return 0
    except OSError as exc:
        print(f"tidelog: cannot reach {args.bootstrap_server}: {exc}", file=sys.stderr)
        return 1


def _transactions(args: argparse.Namespace) -> int:
    from tidelog.tools import transactions
    from tidelog.tools.wire import KafkaWireClient

    try:
        with KafkaWireClient(args.bootstrap_server) as client:
            txns = transactions.open_transactions(client)
            lag = transactions.lso_lag(client, [p for t in txns for p in t.partitions])
    except OSError as exc:
        print(f"tidelog: cannot reach {args.bootstrap_server}: {exc}", file=sys.stderr)
        return 1
    transactions.print_transactions(sys.stdout, txns, lag)
    return 0


def _status(args: argparse.Namespace) -> int:
    from tidelog.tools import status

    try:
        status.run(sys.stdout, args.metrics_url, args.interval, args.top)
    except OSError as exc:
        print(f"tidelog: cannot read {args.metrics_url}: {exc}", file=sys.stderr)
        return 1
    return 0


def _cost(args: argparse.Namespace) -> int:
    from tidelog.tools.cost.command import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
