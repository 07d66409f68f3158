"""The authorizer's decisions and the ACL filters, as Kafka defines them (KIP-140)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidelog.api.acl_model import (
    AclError,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    new_binding,
    new_filter,
)
from tidelog.api.authorizer import ANONYMOUS, Authorizer
from tidelog.metadata.embedded import EmbeddedMetadataStore

T, G, C = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
LIT, PRE = PatternType.LITERAL, PatternType.PREFIXED
ALLOW, DENY = Permission.ALLOW, Permission.DENY


def binding(name: str, op: Operation, perm: Permission = ALLOW, pattern: PatternType = LIT,
            principal: str = ANONYMOUS, host: str = "*", rtype: ResourceType = T):
    return new_binding(rtype, name, pattern, principal, host, op, perm)


def authorizer(*bindings, **kw) -> Authorizer:  # type: ignore[no-untyped-def]
    a = Authorizer(**kw)
    asyncio.run(a.create(list(bindings)))
    return a


def test_no_bindings_means_open_unless_configured_closed() -> None:
    assert Authorizer().authorize(ANONYMOUS, "10.0.0.1", Operation.WRITE, T, "t")
    closed = Authorizer(allow_if_no_acl=False, super_users=["User:admin"])
    assert not closed.authorize(ANONYMOUS, "10.0.0.1", Operation.WRITE, T, "t")
    assert closed.authorize("User:admin", "10.0.0.1", Operation.WRITE, T, "t")


def test_a_binding_on_a_resource_closes_it_to_everyone_else() -> None:
    a = authorizer(binding("orders", Operation.READ, principal="User:alice"))
    assert not a.authorize(ANONYMOUS, "h", Operation.READ, T, "orders")
    assert a.authorize("User:alice", "h", Operation.READ, T, "orders")
    assert a.authorize(ANONYMOUS, "h", Operation.READ, T, "payments")  # no binding: open


def test_read_implies_describe_and_alter_configs_implies_describe_configs() -> None:
    a = authorizer(binding("t", Operation.READ), binding("t", Operation.ALTER_CONFIGS))
    ok = {op for op in Operation if op > Operation.ALL
          and a.authorize(ANONYMOUS, "h", op, T, "t")}
    assert ok == {Operation.READ, Operation.DESCRIBE, Operation.ALTER_CONFIGS,
                  Operation.DESCRIBE_CONFIGS}
    bits = a.authorized_operations(ANONYMOUS, "h", T, "t")
    assert bits == sum(1 << op for op in ok)


def test_deny_wins_and_prefix_wildcard_and_host_match() -> None:
    a = authorizer(binding("logs-", Operation.ALL, pattern=PRE, principal="User:*"),
                   binding("logs-secret", Operation.READ, DENY),
                   binding("*", Operation.WRITE, host="10.0.0.9"))
    assert a.authorize(ANONYMOUS, "h", Operation.WRITE, T, "logs-app")
    assert a.authorize(ANONYMOUS, "h", Operation.WRITE, T, "logs-secret")
    assert not a.authorize(ANONYMOUS, "h", Operation.READ, T, "logs-secret")
    assert a.authorize(ANONYMOUS, "h", Operation.DESCRIBE, T, "logs-secret")
    # the wildcard literal binds every topic: only its host may write elsewhere
    assert a.authorize(ANONYMOUS, "10.0.0.9", Operation.WRITE, T, "metrics")
    assert not a.authorize(ANONYMOUS, "10.0.0.8", Operation.WRITE, T, "metrics")


def test_filters_match_as_kafka_filters_do() -> None:
    pre = binding("orders", Operation.READ, pattern=PRE, principal="User:a")
    lit = binding("orders-eu", Operation.WRITE, principal="User:b")
    other = binding("orders-us", Operation.WRITE, principal="User:b")
    group = binding("orders-eu", Operation.READ, rtype=G)
    everything = [pre, lit, other, group]

    def matching(*args) -> list:  # type: ignore[no-untyped-def]
        f = new_filter(*args)
        return [b for b in everything if f.matches(b)]

    assert matching(T, "orders-eu", PatternType.MATCH, None, None, 1, 1) == [pre, lit]
    assert matching(T, "orders-eu", LIT, None, None, 1, 1) == [lit]
    assert matching(T, "orders", PatternType.ANY, None, None, 1, 1) == [pre]
    assert matching(ResourceType.ANY, None, PatternType.ANY, "User:b", None, 1, 1) == [
        lit, other]
    assert matching(ResourceType.ANY, None, PatternType.ANY, None, None,
                    Operation.READ, ALLOW) == [pre, group]
    with pytest.raises(AclError):
        new_filter(ResourceType.UNKNOWN, None, 1, None, None, 1, 1)


@pytest.mark.parametrize(("args", "why"), [
    ((C, "other", LIT, ANONYMOUS, "*", Operation.ALTER, ALLOW), "kafka-cluster"),
    ((T, "t", PatternType.MATCH, ANONYMOUS, "*", Operation.READ, ALLOW), "pattern type"),
    ((T, "t", LIT, "alice", "*", Operation.READ, ALLOW), "Type:name"),
    ((T, "t", LIT, ANONYMOUS, "*", Operation.ANY, ALLOW), "not allowed"),
    ((G, "g", LIT, ANONYMOUS, "*", Operation.WRITE, ALLOW), "does not apply"),
    ((T, "", LIT, ANONYMOUS, "*", Operation.READ, ALLOW), "empty"),
    ((T, "t", LIT, ANONYMOUS, "*", Operation.READ, 9), "unknown permission"),
])
def test_bad_bindings_are_refused_with_a_reason(args: tuple, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(AclError, match=why):
        new_binding(*args)


def test_bindings_persist_in_metadata(tmp_path: Path) -> None:
    async def run() -> None:
        meta = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
        a = Authorizer(meta)
        keep, drop = binding("a", Operation.READ), binding("b", Operation.WRITE, DENY)
        await a.create([keep, drop, keep])
        await a.delete([new_filter(T, "b", LIT, None, None, 1, 1)])
        again = Authorizer(meta)
        await again.load()
        assert again.describe(new_filter(1, None, 1, None, None, 1, 1)) == [keep]
        await meta.close()
    asyncio.run(run())
