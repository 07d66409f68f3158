"""The `tidelog topics` and `tidelog configs` command lines (kafka-topics.sh and
kafka-configs.sh style): argument parsing, output, exit codes (0 done, 1 refused or
unreachable, 2 bad usage)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from tidelog.tools import topics
from tidelog.tools.wire import KafkaWireClient


def add_commands(sub: Any) -> None:
    """Add `topics` and `configs` to the `tidelog` subcommands."""
    tp = sub.add_parser("topics", help="list, describe, create, delete or grow topics")
    tp.add_argument("action", choices=["list", "describe", "create", "delete", "alter"])
    tp.add_argument("topic", nargs="?")
    tp.add_argument("--bootstrap-server", default="localhost:9092")
    tp.add_argument("--partitions", type=int, help="create: partitions; alter: new total")
    tp.add_argument("--replication-factor", type=int, default=-1)
    tp.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="create: a topic config (repeatable)")
    tp.add_argument("--exclude-internal", action="store_true")
    tp.add_argument("--validate-only", action="store_true",
                    help="create/alter: only check what the broker would do")
    cf = sub.add_parser("configs", help="describe or alter topic and broker configs")
    cf.add_argument("action", choices=["describe", "alter"])
    target = cf.add_mutually_exclusive_group(required=True)
    target.add_argument("--topic")
    target.add_argument("--broker", metavar="ID")
    target.add_argument("--broker-defaults", action="store_true",
                        help="the cluster-wide dynamic broker defaults")
    cf.add_argument("--bootstrap-server", default="localhost:9092")
    cf.add_argument("--all", action="store_true", help="describe: every config, not only "
                    "dynamic ones")
    cf.add_argument("--add-config", default="", metavar="K=V,K2=[A,B]")
    cf.add_argument("--delete-config", default="", metavar="K,K2")
    cf.add_argument("--validate-only", action="store_true")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with KafkaWireClient(args.bootstrap_server) as client:
            if args.command == "topics":
                return _topics(client, args, out, err)
            return _configs(client, args, out, err)
    except topics.AdminError as exc:
        print(f"Error: {exc}", file=err)
        return 1
    except ValueError as exc:
        print(f"tidelog {args.command}: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"tidelog: cannot reach {args.bootstrap_server}: {exc}", file=err)
        return 1


def _topics(client: KafkaWireClient, args: argparse.Namespace, out: TextIO,
            err: TextIO) -> int:
    if args.action == "list":
        for name in topics.list_topics(client, not args.exclude_internal):
            print(name, file=out)
        return 0
    if args.action == "describe":
        topics.print_topics(out, topics.describe_topics(
            client, [args.topic] if args.topic else None))
        return 0
    if not args.topic:
        print(f"tidelog topics {args.action}: name a TOPIC", file=err)
        return 2
    if args.action == "create":
        configs = {}
        for pair in args.config:
            configs.update(topics.parse_config_pairs(pair))
        topics.create_topic(client, args.topic, args.partitions or -1,
                            args.replication_factor, configs, args.validate_only)
        print(f"Created topic {args.topic}." if not args.validate_only else
              f"Topic {args.topic} can be created.", file=out)
    elif args.action == "delete":
        topics.delete_topic(client, args.topic)
        print(f"Deleted topic {args.topic}.", file=out)
    else:
        if args.partitions is None:
            print("tidelog topics alter: give --partitions N", file=err)
            return 2
        topics.add_partitions(client, args.topic, args.partitions, args.validate_only)
        print(f"Topic {args.topic} has {args.partitions} partitions"
              f"{' (validated only)' if args.validate_only else ''}.", file=out)
    return 0


def _configs(client: KafkaWireClient, args: argparse.Namespace, out: TextIO,
             err: TextIO) -> int:
    if args.topic:
        rtype, name, what = topics.TOPIC, args.topic, f"topic {args.topic}"
    elif args.broker is not None:
        rtype, name, what = topics.BROKER, args.broker, f"broker {args.broker}"
    else:
        rtype, name, what = topics.BROKER, "", "the default broker"
    if args.action == "describe":
        topics.print_configs(out, what, topics.describe_configs(client, rtype, name), args.all)
        return 0
    add = topics.parse_config_pairs(args.add_config)
    delete = [k.strip() for k in args.delete_config.split(",") if k.strip()]
    if not add and not delete:
        print("tidelog configs alter: give --add-config and/or --delete-config", file=err)
        return 2
    topics.alter_configs(client, rtype, name, add, delete, args.validate_only)
    print(f"Completed updating config for {what}"
          f"{' (validated only)' if args.validate_only else ''}.", file=out)
    return 0
