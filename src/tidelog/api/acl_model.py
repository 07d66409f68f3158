"""Kafka's ACL vocabulary (KIP-140): the wire codes of resource types, pattern types,
operations and permissions, one binding, a filter over bindings, and which operations
imply which. Pure data: `authorizer.py` keeps the bindings and decides with them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ResourceType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


Op = Operation
SUPPORTED: dict[ResourceType, tuple[Operation, ...]] = {
    ResourceType.TOPIC: (Op.READ, Op.WRITE, Op.CREATE, Op.DESCRIBE, Op.DELETE, Op.ALTER,
                         Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS),
    ResourceType.GROUP: (Op.READ, Op.DESCRIBE, Op.DELETE),
    ResourceType.CLUSTER: (Op.CREATE, Op.CLUSTER_ACTION, Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS,
                           Op.IDEMPOTENT_WRITE, Op.ALTER, Op.DESCRIBE),
    ResourceType.TRANSACTIONAL_ID: (Op.DESCRIBE, Op.WRITE),
    ResourceType.DELEGATION_TOKEN: (Op.DESCRIBE,),
    ResourceType.USER: (Op.CREATE_TOKENS, Op.DESCRIBE_TOKENS),
}
"""Which operations each resource type has (what authorized-operations sets range over)."""

IMPLIED_BY: dict[Operation, tuple[Operation, ...]] = {
    Op.DESCRIBE: (Op.DESCRIBE, Op.READ, Op.WRITE, Op.DELETE, Op.ALTER),
    Op.DESCRIBE_CONFIGS: (Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS),
}
"""An ALLOW for any of these grants the key (Kafka: READ lets you DESCRIBE, and so on)."""

CLUSTER_NAME = "kafka-cluster"
WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"


class AclError(ValueError):
    """A binding or filter Kafka would refuse: its message goes back to the client."""


@dataclass(frozen=True, slots=True)
class AclBinding:
    resource_type: ResourceType
    name: str
    pattern: PatternType
    principal: str
    host: str
    operation: Operation
    permission: Permission

    def covers(self, resource_type: ResourceType, name: str) -> bool:
        """Whether this binding applies to the resource `name` of `resource_type`."""
        if self.resource_type != resource_type:
            return False
        if self.pattern == PatternType.PREFIXED:
            return name.startswith(self.name)
        return self.name in (name, WILDCARD)

    def to_json(self) -> dict[str, object]:
        return {"resource_type": int(self.resource_type), "name": self.name,
                "pattern": int(self.pattern), "principal": self.principal, "host": self.host,
                "operation": int(self.operation), "permission": int(self.permission)}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> AclBinding:
        return cls(ResourceType(int(str(d["resource_type"]))), str(d["name"]),
                   PatternType(int(str(d["pattern"]))), str(d["principal"]), str(d["host"]),
                   Operation(int(str(d["operation"]))), Permission(int(str(d["permission"]))))


def _enum(kind: type[IntEnum], code: int, what: str) -> IntEnum:
    try:
        return kind(code)
    except ValueError:
        raise AclError(f"unknown {what} {code}") from None


def new_binding(resource_type: int, name: str, pattern: int, principal: str, host: str,
                operation: int, permission: int) -> AclBinding:
    """A binding to store, checked as Kafka checks a CreateAcls creation."""
    rt = ResourceType(_enum(ResourceType, resource_type, "resource type"))
    pt = PatternType(_enum(PatternType, pattern, "pattern type"))
    op = Operation(_enum(Operation, operation, "operation"))
    perm = Permission(_enum(Permission, permission, "permission type"))
    if rt in (ResourceType.UNKNOWN, ResourceType.ANY):
        raise AclError(f"resource type {rt.name} is not allowed in an ACL")
    if pt not in (PatternType.LITERAL, PatternType.PREFIXED):
        raise AclError(f"pattern type {pt.name} is not allowed in an ACL "
                       "(LITERAL or PREFIXED)")
    if op in (Operation.UNKNOWN, Operation.ANY):
        raise AclError(f"operation {op.name} is not allowed in an ACL")
    if op != Operation.ALL and op not in SUPPORTED[rt]:
        raise AclError(f"operation {op.name} does not apply to a {rt.name} resource")
    if perm in (Permission.UNKNOWN, Permission.ANY):
        raise AclError(f"permission type {perm.name} is not allowed in an ACL")
    if not name:
        raise AclError("the resource name must not be empty")
    if rt == ResourceType.CLUSTER and (name != CLUSTER_NAME or pt != PatternType.LITERAL):
        raise AclError(f"the only valid name for the CLUSTER resource is {CLUSTER_NAME} "
                       "(LITERAL)")
    if pt == PatternType.PREFIXED and name == WILDCARD:
        raise AclError("a PREFIXED pattern may not be the wildcard '*'")
    kind, sep, user = principal.partition(":")
    if not sep or not kind or not user:
        raise AclError(f"principal {principal!r} is not of the form Type:name")
    if not host:
        raise AclError("the host must not be empty (use '*' for any host)")
    return AclBinding(rt, name, pt, principal, host, op, perm)


@dataclass(frozen=True, slots=True)
class AclFilter:
    """DescribeAcls/DeleteAcls filter; None and ANY match anything."""

    resource_type: ResourceType
    name: str | None
    pattern: PatternType
    principal: str | None
    host: str | None
    operation: Operation
    permission: Permission

    def matches(self, b: AclBinding) -> bool:
        if self.resource_type not in (ResourceType.ANY, b.resource_type):
            return False
        if not self._matches_pattern(b):
            return False
        if self.principal is not None and self.principal != b.principal:
            return False
        if self.host is not None and self.host != b.host:
            return False
        if self.operation not in (Operation.ANY, b.operation):
            return False
        return self.permission in (Permission.ANY, b.permission)

    def _matches_pattern(self, b: AclBinding) -> bool:
        if self.pattern == PatternType.MATCH:
            if self.name is None:
                return True
            if b.pattern == PatternType.LITERAL:
                return b.name in (self.name, WILDCARD)
            return self.name.startswith(b.name)
        if self.pattern not in (PatternType.ANY, b.pattern):
            return False
        return self.name is None or self.name == b.name


def new_filter(resource_type: int, name: str | None, pattern: int, principal: str | None,
               host: str | None, operation: int, permission: int) -> AclFilter:
    """A filter as DescribeAcls/DeleteAcls send it; UNKNOWN anywhere is refused."""
    rt = ResourceType(_enum(ResourceType, resource_type, "resource type"))
    pt = PatternType(_enum(PatternType, pattern, "pattern type"))
    op = Operation(_enum(Operation, operation, "operation"))
    perm = Permission(_enum(Permission, permission, "permission type"))
    for value in (rt, pt, op, perm):
        if value == 0:
            raise AclError(f"filter has an UNKNOWN {type(value).__name__}")
    return AclFilter(rt, name, pt, principal, host, op, perm)
