"""The ACL authorizer: bindings kept in cluster metadata (so they survive restarts and
any broker sees the same set) and Kafka's decision rules over them.

The rules are Kafka's: a super user may do anything; a DENY that matches wins; a resource
with no binding at all is open when `allow.everyone.if.no.acl.found` (Tidelog's default,
since a broker without bindings must serve everyone, as Kafka does with no authorizer);
otherwise an ALLOW must match the principal (or `User:*`), the host (or `*`) and the
operation (or ALL, or one that implies it: READ allows DESCRIBE)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable

from tidelog.api.acl_model import (
    IMPLIED_BY,
    SUPPORTED,
    WILDCARD,
    WILDCARD_PRINCIPAL,
    AclBinding,
    AclFilter,
    Operation,
    Permission,
    ResourceType,
)
from tidelog.metadata.base import MetadataStore, Txn

log = logging.getLogger(__name__)

ACLS = "acls/"
ANONYMOUS = "User:ANONYMOUS"
"""Every PLAINTEXT client's principal (no authentication)."""


def _key(b: AclBinding) -> str:
    canon = json.dumps(b.to_json(), sort_keys=True, separators=(",", ":"))
    return ACLS + hashlib.sha256(canon.encode()).hexdigest()


def parse_super_users(value: str) -> frozenset[str]:
    """Kafka's `super.users`: `User:alice;User:bob`."""
    return frozenset(p.strip() for p in value.split(";") if p.strip())


class Authorizer:
    def __init__(self, meta: MetadataStore | None = None, *, allow_if_no_acl: bool = True,
                 super_users: Iterable[str] = ()) -> None:
        self._meta = meta
        self.allow_if_no_acl = allow_if_no_acl
        self.super_users = frozenset(super_users)
        self._bindings: dict[AclBinding, str] = {}
        self._by_type: dict[ResourceType, list[AclBinding]] = {}

    async def load(self) -> None:
        if self._meta is None:
            return
        for e in await self._meta.list(ACLS):
            try:
                self._add(AclBinding.from_json(json.loads(e.value)), e.key)
            except (ValueError, KeyError) as exc:
                log.error("ignoring unreadable ACL record %s: %r", e.key, exc)
        if self._bindings:
            log.info("authorizer: %d ACL binding(s) loaded", len(self._bindings))

    def _add(self, b: AclBinding, key: str) -> None:
        if b not in self._bindings:
            self._bindings[b] = key
            self._by_type.setdefault(b.resource_type, []).append(b)

    def _remove(self, b: AclBinding) -> None:
        del self._bindings[b]
        self._by_type[b.resource_type].remove(b)

    # -- administration ------------------------------------------------------------------

    def describe(self, f: AclFilter) -> list[AclBinding]:
        return [b for b in self._bindings if f.matches(b)]

    async def create(self, bindings: list[AclBinding]) -> None:
        """Store every new binding in one metadata transaction; an existing one is kept."""
        new = {b: _key(b) for b in bindings if b not in self._bindings}
        if not new:
            return
        if self._meta is not None:
            await self._meta.commit(Txn(puts=[(k, json.dumps(b.to_json()).encode())
                                              for b, k in new.items()]))
        for b, k in new.items():
            self._add(b, k)
            log.info("ACL created: %s", b)

    async def delete(self, filters: list[AclFilter]) -> list[list[AclBinding]]:
        """Delete what each filter matches, all in one transaction; per filter, what it
        matched (a binding matched by two filters is reported by both, as Kafka does)."""
        matched = [self.describe(f) for f in filters]
        gone = {b for group in matched for b in group}
        if gone:
            if self._meta is not None:
                await self._meta.commit(Txn(deletes=[self._bindings[b] for b in gone]))
            for b in gone:
                self._remove(b)
                log.info("ACL deleted: %s", b)
        return matched

    # -- decisions -----------------------------------------------------------------------

    @property
    def allows_all(self) -> bool:
        """No binding and open by default: hot paths may skip their checks."""
        return not self._bindings and self.allow_if_no_acl

    def authorize(self, principal: str, host: str, op: Operation, rtype: ResourceType,
                  name: str) -> bool:
        if not self._bindings:  # the common case stays one branch
            return self.allow_if_no_acl or principal in self.super_users
        if principal in self.super_users:
            return True
        acls = [b for b in self._by_type.get(rtype, ()) if b.covers(rtype, name)]
        if not acls:
            return self.allow_if_no_acl
        mine = [b for b in acls if b.principal in (principal, WILDCARD_PRINCIPAL)
                and b.host in (host, WILDCARD)]
        if any(b.permission == Permission.DENY and b.operation in (op, Operation.ALL)
               for b in mine):
            return False
        granting = IMPLIED_BY.get(op, (op,))
        return any(b.permission == Permission.ALLOW
                   and (b.operation == Operation.ALL or b.operation in granting)
                   for b in mine)

    def authorized_operations(self, principal: str, host: str, rtype: ResourceType,
                              name: str) -> int:
        """The bit field Metadata, DescribeCluster and DescribeGroups report: bit `op`
        set for each operation this principal may perform on the resource."""
        bits = 0
        for op in SUPPORTED[rtype]:
            if self.authorize(principal, host, op, rtype, name):
                bits |= 1 << op
        return bits
