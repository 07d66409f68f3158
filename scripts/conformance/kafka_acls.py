"""A stand-in for Kafka's `kafka-acls.sh`, for the librdkafka tests that shell out to it.

The runner calls `$KAFKA_PATH/bin/kafka-acls.sh --bootstrap-server $BROKERS --add
--deny-principal 'User:*' --operation All --deny-host '*' --topic T` (0109, 0115, 0119).
The Java tool turns that into one CreateAcls request; so does this script, through
librdkafka's admin client, so the broker sees the same request without a JVM. Only the
options those tests use (topic bindings, --add and --remove) are supported.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

TIMEOUT_S = 30.0


def _operation(name: str) -> AclOperation:
    """Kafka's CLI spelling (All, Read, Describe, DescribeConfigs) to the enum."""
    snake = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper()
    return AclOperation[snake]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kafka-acls.sh")
    p.add_argument("--bootstrap-server", required=True)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--add", action="store_true")
    action.add_argument("--remove", action="store_true")
    p.add_argument("--allow-principal", action="append", default=[])
    p.add_argument("--deny-principal", action="append", default=[])
    p.add_argument("--allow-host", action="append", default=[])
    p.add_argument("--deny-host", action="append", default=[])
    p.add_argument("--operation", action="append", default=[])
    p.add_argument("--topic", required=True)
    p.add_argument("--resource-pattern-type", default="literal")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    pattern = ResourcePatternType[args.resource_pattern_type.upper()]
    ops = [_operation(o) for o in args.operation] or [AclOperation.ALL]
    bindings = [AclBinding(ResourceType.TOPIC, args.topic, pattern, principal, host, op, perm)
                for perm, principals, hosts in (
                    (AclPermissionType.ALLOW, args.allow_principal, args.allow_host or ["*"]),
                    (AclPermissionType.DENY, args.deny_principal, args.deny_host or ["*"]))
                for principal in principals for host in hosts for op in ops]
    admin = AdminClient({"bootstrap.servers": args.bootstrap_server})
    try:
        if args.add:
            for f in admin.create_acls(bindings, request_timeout=TIMEOUT_S).values():
                f.result(TIMEOUT_S)
            print(f"Adding ACLs for resource `ResourcePattern(resourceType=TOPIC, "
                  f"name={args.topic}, patternType={pattern.name})`: {len(bindings)}")
        else:
            filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type,
                                        b.principal, b.host, b.operation, b.permission_type)
                       for b in bindings] or [AclBindingFilter(
                           ResourceType.TOPIC, args.topic, pattern, None, None,
                           AclOperation.ANY, AclPermissionType.ANY)]
            for f in admin.delete_acls(filters, request_timeout=TIMEOUT_S).values():
                f.result(TIMEOUT_S)
    except Exception as exc:  # the Java tool prints the error and exits 1
        print(f"Error while executing ACL command: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
