"""Traffic counters the API layer keeps for the metrics endpoint.

Per topic: record-batch bytes and records produced, record bytes fetched (Kafka's
BrokerTopicMetrics). Per zone pair: bytes on the wire between clients and this broker,
split into *data* (record batches) and *control* (everything else in the frames: headers,
metadata, group and offset traffic). Every count is O(1) per request or per partition,
never per record; the metrics endpoint reads the plain integers at scrape time.

Zones: the broker's is `broker.rack` (`default` when empty). A client's is its
connection's (`zone/connection.py`: listener, source address, client.id token, then
client.rack); a connection whose zone is unknown is counted as coming from the broker's
own zone, the cheapest assumption a cost estimate can make explicit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from tidelog.api.base import Context
from tidelog.protocol import records

DEFAULT_ZONE = "default"
_BATCH_FIELDS = struct.Struct(">qi")  # baseOffset, batchLength
_RECORD_COUNT = struct.Struct(">i")
_RECORD_COUNT_AT = records.HEADER_SIZE - 4
_SIZE = struct.Struct(">i")

ZoneKey = tuple[str, str, str, str]
"""(source zone, destination zone, kind: data|control, traffic: client|broker)."""


@dataclass(slots=True)
class TopicTraffic:
    bytes_in: int = 0
    """Record-batch bytes appended by Produce."""
    messages_in: int = 0
    """Records appended by Produce (from the batch headers)."""
    bytes_out: int = 0
    """Record-batch bytes sent in Fetch responses."""


class Traffic:
    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.topics: dict[str, TopicTraffic] = {}
        self.zones: dict[ZoneKey, int] = {}
        self.topic_zones: dict[tuple[str, str, str], int] = {}
        """(topic, source zone, destination zone) -> record-batch bytes, client traffic:
        what crosses zones, per topic."""

    def topic(self, name: str) -> TopicTraffic:
        t = self.topics.get(name)
        if t is None:
            t = self.topics[name] = TopicTraffic()
        return t

    def produced(self, topic: str, data: bytes | bytearray | memoryview,
                 zone: str | None = None) -> None:
        """A record set was appended, sent from `zone` (default: this broker's): O(batches
        in it), it walks the batch headers."""
        t = self.topic(topic)
        t.bytes_in += len(data)
        t.messages_in += record_count(data)
        self.topic_zone(topic, zone or self.zone, self.zone, len(data))

    def fetched(self, topic: str, nbytes: int, zone: str | None = None) -> None:
        """Record bytes sent in a Fetch response to `zone` (default: this broker's)."""
        self.topic(topic).bytes_out += nbytes
        self.topic_zone(topic, self.zone, zone or self.zone, nbytes)

    def topic_zone(self, topic: str, source: str, destination: str, nbytes: int) -> None:
        key = (topic, source, destination)
        self.topic_zones[key] = self.topic_zones.get(key, 0) + nbytes

    def add(self, key: ZoneKey, nbytes: int) -> None:
        if nbytes > 0:
            self.zones[key] = self.zones.get(key, 0) + nbytes

    def from_client(self, zone: str, frame_bytes: int, data_bytes: int,
                    kind: str = "client") -> None:
        """A request in; `kind` "broker" when another broker sent it (counted once, by
        the broker that serves it)."""
        self.add((zone, self.zone, "data", kind), data_bytes)
        self.add((zone, self.zone, "control", kind), frame_bytes - data_bytes)

    def to_client(self, zone: str, frame_bytes: int, data_bytes: int,
                  kind: str = "client") -> None:
        self.add((self.zone, zone, "data", kind), data_bytes)
        self.add((self.zone, zone, "control", kind), frame_bytes - data_bytes)


def traffic(ctx: Context) -> Traffic:
    """The broker's counters, created on first use."""
    t = ctx.extras.get("traffic")
    if t is None:
        t = ctx.extras["traffic"] = Traffic(ctx.broker.rack or DEFAULT_ZONE)
    assert isinstance(t, Traffic)
    return t


def record_count(data: bytes | bytearray | memoryview) -> int:
    """Records in a validated record set, summed over its batch headers."""
    n = pos = 0
    end = len(data)
    while end - pos >= records.HEADER_SIZE:
        _, length = _BATCH_FIELDS.unpack_from(data, pos)
        n += _RECORD_COUNT.unpack_from(data, pos + _RECORD_COUNT_AT)[0]
        pos += length + records.LOG_OVERHEAD
    return n


def produce_data_bytes(req: Any) -> int:
    """Record-set bytes in a Produce request (O(partitions))."""
    return sum(len(pd.records) for t in req.topic_data for pd in t.partition_data
               if pd.records)


def frame_bytes(buffers: list[bytes | bytearray | memoryview]) -> int:
    """Size of a response frame given as buffers, from its size prefix (O(1))."""
    return int(_SIZE.unpack_from(buffers[0], 0)[0]) + 4
