"""A stand-in for Kafka's `kafka-topics.sh`, for the librdkafka tests that shell out to it.

The runner calls `$KAFKA_PATH/bin/kafka-topics.sh --bootstrap-server $BROKERS ...` (test.c's
test_kafka_topics) to create a topic with configs, add partitions or delete a topic. The Java
tool does each of these with one Admin API request; so does this script (CreateTopics,
CreatePartitions, DeleteTopics, through librdkafka's admin client), so the broker sees the same
requests without a JVM. Only the options those tests use are supported.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions, NewTopic

TIMEOUT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kafka-topics.sh")
    p.add_argument("--bootstrap-server", required=True)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--create", action="store_true")
    action.add_argument("--alter", action="store_true")
    action.add_argument("--delete", action="store_true")
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int)
    p.add_argument("--replication-factor", type=int)
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    admin = AdminClient({"bootstrap.servers": args.bootstrap_server})
    try:
        if args.create:
            configs = dict(c.split("=", 1) for c in args.config)
            topic = NewTopic(args.topic, num_partitions=args.partitions or -1,
                             replication_factor=args.replication_factor or -1, config=configs)
            admin.create_topics([topic], operation_timeout=TIMEOUT_S)[args.topic].result(TIMEOUT_S)
            print(f"Created topic {args.topic}.")
        elif args.alter:
            if args.partitions is None:
                p.error("--alter: only --partitions is supported")
            parts = NewPartitions(args.topic, args.partitions)
            admin.create_partitions([parts], operation_timeout=TIMEOUT_S)[args.topic].result(
                TIMEOUT_S)
            print(f"Topic {args.topic} now has {args.partitions} partitions.")
        else:
            admin.delete_topics([args.topic], operation_timeout=TIMEOUT_S)[args.topic].result(
                TIMEOUT_S)
            print(f"Deleted topic {args.topic}.")
    except Exception as exc:  # the Java tool prints the error and exits 1
        print(f"Error while executing topic command : {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
