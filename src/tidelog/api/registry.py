"""Every API the broker serves, by key; ApiVersions is derived from this list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tidelog.api import (
    acl,
    admin,
    api_versions,
    configs,
    consumer_groups,
    fetch,
    forward,
    groups,
    list_offsets,
    metadata,
    offsets,
    partitions_admin,
    produce,
    scram,
    tail_index,
    txn,
    txn_markers,
)
from tidelog.api.base import Api, Context
from tidelog.protocol.codec import RequestHeader
from tidelog.zone.forward_wire import FORWARD
from tidelog.zone.tail_wire import TAIL_INDEX

ALL: list[Api] = [
    *api_versions.APIS,
    *metadata.APIS,
    *admin.APIS,
    *configs.APIS,
    *partitions_admin.APIS,
    *produce.APIS,
    *fetch.APIS,
    *list_offsets.APIS,
    *groups.APIS,
    *consumer_groups.APIS,
    *offsets.APIS,
    *txn.APIS,
    *txn_markers.APIS,
    *acl.APIS,
    *scram.APIS,
]
BY_KEY: dict[int, Api] = {a.key: a for a in ALL}

PrivateHandler = Callable[[Context, RequestHeader, memoryview], Awaitable[bytes]]
PRIVATE: dict[int, PrivateHandler] = {
    FORWARD: forward.handle_forward,
    TAIL_INDEX: tail_index.handle_tail_index,
}
"""Tidelog's inter-broker requests (`codec.PRIVATE_API_KEYS`), version 0 each; never in
ApiVersions."""
