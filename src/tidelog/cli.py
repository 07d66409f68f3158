"""`tidelog` command line: `tidelog server [--config FILE] [--set key=value ...]`,
`tidelog groups list|describe GROUP [--bootstrap-server HOST:PORT]`,
`tidelog transactions [--bootstrap-server HOST:PORT]`."""

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
    parser = argparse.ArgumentParser(prog="tidelog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("server", help="run a broker")
    srv.add_argument("--config", help="server.properties file")
    srv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one setting (repeatable)")
    srv.add_argument("--ready-file", help="write the bound port here once serving")
    grp = sub.add_parser("groups", help="list consumer groups, or describe one with its lag")
    grp.add_argument("action", choices=["list", "describe"])
    grp.add_argument("group", nargs="?")
    grp.add_argument("--bootstrap-server", default="localhost:9092")
    txn = sub.add_parser("transactions", help="open transactions and their LSO lag")
    txn.add_argument("--bootstrap-server", default="localhost:9092")
    args = parser.parse_args(argv)
    if args.command == "groups":
        return _groups(args)
    if args.command == "transactions":
        return _transactions(args)
    try:
        config = Config.load(args.config, _overrides(args.set))
    except (ConfigError, OSError) as exc:
        print(f"tidelog: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.get_str("log.level").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    from tidelog.server import serve

    try:
        return uvloop.run(serve(config, args.ready_file))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:  # e.g. the port is taken, the data directory is not writable
        logging.getLogger("tidelog").error("cannot start: %s", exc)
        return 1


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


if __name__ == "__main__":
    sys.exit(main())
