"""Every API the broker serves, by key; ApiVersions is derived from this list."""

from __future__ import annotations

from tidelog.api import (
    acl,
    admin,
    api_versions,
    configs,
    consumer_groups,
    fetch,
    groups,
    list_offsets,
    metadata,
    offsets,
    partitions_admin,
    produce,
    scram,
    txn,
    txn_markers,
)
from tidelog.api.base import Api

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
