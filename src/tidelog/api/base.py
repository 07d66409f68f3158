"""What every API module shares: the broker context handlers see, error codes, and a
constructor for kio response objects that fits one call to every version."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from tidelog.api.acl_model import Operation, ResourceType
from tidelog.api.authorizer import ANONYMOUS, Authorizer
from tidelog.coordinator.coordinator import GroupCoordinator
from tidelog.coordinator.transactions import TransactionCoordinator
from tidelog.partition.topics import TopicManager
from tidelog.protocol.codec import RequestHeader


@dataclass(slots=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass(slots=True)
class BrokerConfig:
    cluster_id: str = "tidelog-cluster"
    auto_create_topics: bool = True
    num_partitions: int = 1
    fetch_max_wait_cap: float = 30.0


@dataclass(slots=True)
class Context:
    """Everything a handler may touch: the compute layer and the broker's identity."""

    broker: BrokerInfo
    topics: TopicManager
    coordinator: GroupCoordinator
    config: BrokerConfig = field(default_factory=BrokerConfig)
    transactions: TransactionCoordinator | None = None
    authorizer: Authorizer = field(default_factory=Authorizer)
    extras: dict[str, Any] = field(default_factory=dict)

    def allowed(self, header: RequestHeader, op: Operation, rtype: ResourceType,
                name: str) -> bool:
        """May this request's client do `op` on the resource? Every PLAINTEXT client is
        User:ANONYMOUS from its own address."""
        return self.authorizer.authorize(ANONYMOUS, header.client_host, op, rtype, name)

    def operations(self, header: RequestHeader, rtype: ResourceType, name: str) -> int:
        """The authorized-operations bit field for this request's client."""
        return self.authorizer.authorized_operations(ANONYMOUS, header.client_host, rtype,
                                                     name)


Handler = Callable[[Context, RequestHeader, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A response a handler encoded itself: the whole frame as buffers (fetch's records
    go out without a copy)."""

    buffers: list[bytes | bytearray | memoryview]


@dataclass(frozen=True, slots=True)
class Api:
    key: int
    min_version: int
    max_version: int
    handler: Handler


@cache
def response_module(api_key: int, version: int) -> ModuleType:
    return load_payload_module(api_key, version, EntityType.response)


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def make(cls: type, **kwargs: Any) -> Any:
    """Build a kio entity from the kwargs its version has; others are dropped, so one call
    site serves every version."""
    names = _field_names(cls)
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def has_field(cls: type, name: str) -> bool:
    return name in _field_names(cls)


def error(name: str) -> ErrorCode:
    return ErrorCode[name]


NONE = ErrorCode.none
NO_OPERATIONS = -2147483648
"""Authorized operations not asked for (INT32_MIN on the wire)."""
