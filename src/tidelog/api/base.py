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
from tidelog.zone.produce_proxy import ProduceProxy
from tidelog.zone.remote_fetch import RemoteFetch

PeerRequest = Callable[[int, Any], Awaitable[Any]]
"""(node, kio request) -> its decoded response."""


@dataclass(slots=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int
    rack: str | None = None
    endpoints: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Advertised (host, port) by listener name."""

    def endpoint(self, listener: str) -> tuple[str, int]:
        """Where a client that came in on `listener` reaches this broker: that listener's
        advertised address, else the first listener's."""
        return self.endpoints.get(listener, (self.host, self.port))


@dataclass(slots=True)
class ClusterView:
    """What a handler needs of the cluster: the live brokers and the controller (cluster
    mode; without one the broker is alone and both are itself)."""

    brokers: Callable[[], list[BrokerInfo]]
    controller_id: Callable[[], int]


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
    cluster: ClusterView | None = None
    remote_fetch: RemoteFetch | None = None
    """Reads of the other brokers' WAL files (a cluster on a shared volume): for zoned
    fetches (`zone.fetch.enable`: this broker serves a zoned client's fetch of a
    partition owned in another zone, and as an owner names a broker of the client's zone
    as the preferred read replica, KIP-392) and an owner's reads of proxied batches."""
    produce_proxy: ProduceProxy | None = None
    """Produce through this broker for a zoned client (docs/design/0003-zones.md); used
    while `zone.routing.enable` is on (a broker config that may change at run time)."""
    peer: PeerRequest | None = None
    """A Kafka request to another broker (a proxy passes on what only the owner answers)."""

    def zone_fetch(self) -> RemoteFetch | None:
        """The WAL reader while zoned fetches go through a same-zone broker
        (`zone.fetch.enable`, or routing, which needs it)."""
        flags = self.topics.flags
        return self.remote_fetch if (flags["zone.fetch.enable"]
                                     or flags["zone.routing.enable"]) else None

    def zone_proxy(self) -> ProduceProxy | None:
        """The produce proxy while `zone.routing.enable` is on."""
        return self.produce_proxy if self.topics.flags["zone.routing.enable"] else None

    def zone_brokers(self, zone: str | None) -> list[int]:
        """The live brokers of `zone` by node id (none for no zone): a stream's broker there
        is `[stream id % n]`, the same for every broker asked."""
        if zone is None:
            return []
        return [b.node_id for b in self.live_brokers() if b.rack == zone]

    def live_brokers(self) -> list[BrokerInfo]:
        """Every live broker, sorted by node id (this one alone without a cluster)."""
        if self.cluster is None:
            return [self.broker]
        return sorted(self.cluster.brokers(), key=lambda b: b.node_id)

    def broker_by_id(self, node_id: int) -> BrokerInfo | None:
        if node_id == self.broker.node_id:
            return self.broker
        if self.cluster is None:
            return None
        return next((b for b in self.cluster.brokers() if b.node_id == node_id), None)

    def controller_id(self) -> int:
        return self.broker.node_id if self.cluster is None else self.cluster.controller_id()

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
