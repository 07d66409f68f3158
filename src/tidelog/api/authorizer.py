"""The ACL authorizer: bindings kept in cluster metadata (so they survive restarts and
any broker sees the same set) and Kafka's decision rules over them.

The rules are Kafka's: a super user may do anything; a DENY that matches wins; a resource
with no binding at all is open when `allow.everyone.if.no.acl.found` (Tidelog's default,
since a broker without bindings must serve everyone, as Kafka does with no authorizer);
otherwise an ALLOW must match the principal (or `User:*`), the host (or `*`) and the
operation (or ALL, or one that implies it: READ allows DESCRIBE).

On a cluster every broker follows `acls/` with a watch, so a binding created or deleted
through any broker is enforced by all of them within the watch's delay."""

from __future__ import annotations

import asyncio
import contextlib
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
from tidelog.metadata.base import Listing, MetadataStore, Txn, WatchEvent, follow

log = logging.getLogger(__name__)

ACLS = "acls/"
ANONYMOUS = "User:ANONYMOUS"
"""Every PLAINTEXT client's principal (no authentication)."""
RETRY_SECONDS = 0.5
"""Pause before watching again after a watch failed (the store is likely reconnecting)."""


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
        self._keys: dict[str, AclBinding] = {}
        self._by_type: dict[ResourceType, list[AclBinding]] = {}
        self._revision = 0
        """The metadata revision the bindings reflect (0: not following the store)."""
        self._watcher: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Read the stored bindings, then follow their changes until `close`."""
        if self._meta is None:
            return
        listing = await self._meta.list_all(ACLS)
        for e in listing:
            self._put(e.key, e.value)
        self._revision = listing.revision
        if self._bindings:
            log.info("authorizer: %d ACL binding(s) loaded", len(self._bindings))
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(
                self._follow(listing.revision), name="acl-watch")

    async def close(self) -> None:
        """Stop following the store."""
        task, self._watcher = self._watcher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, revision: int) -> None:
        """Apply the changes after `revision` until the store closes; a failed watch is
        started again from the last revision it may not have finished."""
        assert self._meta is not None

        async def replace(listing: Listing) -> None:
            self._replace(listing)

        await follow(self._meta, ACLS, revision, self._apply, what="ACLs", resync=replace,
                     retry=RETRY_SECONDS)

    async def _apply(self, ev: WatchEvent) -> None:
        if ev.value is None:
            b = self._keys.get(ev.key)
            if b is not None and self._remove(b):
                log.info("ACL deleted (metadata): %s", b)
        elif self._put(ev.key, ev.value):
            log.info("ACL created (metadata): %s", self._keys[ev.key])
        self._revision = max(self._revision, ev.version)

    def _replace(self, listing: Listing) -> int:
        """Make the bindings exactly those listed; returns the listing's revision."""
        self._bindings, self._keys, self._by_type = {}, {}, {}
        for e in listing:
            self._put(e.key, e.value)
        self._revision = listing.revision
        log.info("authorizer: ACLs re-read, %d binding(s)", len(self._bindings))
        return listing.revision

    def _put(self, key: str, value: bytes) -> bool:
        """Store one record; False when unreadable or already known."""
        try:
            b = AclBinding.from_json(json.loads(value))
        except (ValueError, KeyError) as exc:
            log.error("ignoring unreadable ACL record %s: %r", key, exc)
            return False
        old = self._keys.get(key)
        if old is not None and old != b:
            self._remove(old)
        return self._add(b, key)

    def _add(self, b: AclBinding, key: str) -> bool:
        self._keys[key] = b
        if b in self._bindings:
            return False
        self._bindings[b] = key
        self._by_type.setdefault(b.resource_type, []).append(b)
        return True

    def _remove(self, b: AclBinding) -> bool:
        """Idempotent: the watch may have removed it first."""
        key = self._bindings.pop(b, None)
        if key is None:
            return False
        self._keys.pop(key, None)
        self._by_type[b.resource_type].remove(b)
        return True

    # -- administration ------------------------------------------------------------------

    def describe(self, f: AclFilter) -> list[AclBinding]:
        return [b for b in self._bindings if f.matches(b)]

    async def create(self, bindings: list[AclBinding]) -> None:
        """Store every new binding in one metadata transaction; an existing one is kept."""
        new = {b: _key(b) for b in bindings if b not in self._bindings}
        if not new:
            return
        if self._meta is not None:
            revision = await self._meta.commit(Txn(puts=[(k, json.dumps(b.to_json()).encode())
                                                         for b, k in new.items()]))
            if not self._current(revision):
                return
        for b, k in new.items():
            self._add(b, k)
            log.info("ACL created: %s", b)

    async def delete(self, filters: list[AclFilter]) -> list[list[AclBinding]]:
        """Delete what each filter matches, all in one transaction; per filter, what it
        matched (a binding matched by two filters is reported by both, as Kafka does)."""
        matched = [self.describe(f) for f in filters]
        gone = {b for group in matched for b in group}
        if gone:
            revision = 0
            if self._meta is not None:
                revision = await self._meta.commit(
                    Txn(deletes=[self._bindings[b] for b in gone]))
            if self._current(revision):
                for b in gone:
                    if self._remove(b):
                        log.info("ACL deleted: %s", b)
        return matched

    def _current(self, revision: int) -> bool:
        """Our commit at `revision` may be applied here: the watch has not gone past it
        (else it applied the commit already, and maybe a later change to the same key)."""
        return revision >= self._revision

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
