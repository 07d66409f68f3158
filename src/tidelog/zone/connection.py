"""The zone of a client connection (docs/design/0003-zones.md): the listener it reached,
else its source address (`zone.cidr.blocks`), else a zone token in its `client.id`, else
its `client.rack` (the `rack_id` of Fetch or ConsumerGroupHeartbeat). Decided once per
connection and kept: a client's requests must not move between zones' counters."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tidelog.config import ConfigError

CLIENT_ID_KEYS = ("tidelog_az", "automq_az", "ws_az", "diskless_az")
"""Our spelling and the peers' (AutoMQ, WarpStream, Inkless): migrating clients need no
change."""
_TOKENS = re.compile(r"[,;&\s]+")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class ClientConnection:
    """What the API layer knows of the connection a request came on."""

    listener: str = "PLAINTEXT"
    peer_host: str = ""
    """Kafka's form, "/127.0.0.1" (DescribeGroups reports it)."""
    zone: str | None = None
    how: str = "none"
    """How the zone was found: listener, cidr, client_id, rack, broker, or none (yet)."""
    peer_broker: int | None = None
    """The node id of the broker on the other end (its client.id says so): its bytes
    are broker traffic, in that broker's zone."""
    named: bool = False
    """The first request's client.id was looked at."""


@dataclass(frozen=True, slots=True)
class ZoneRules:
    listener_zones: dict[str, str] = field(default_factory=dict)
    cidr_blocks: tuple[tuple[Network, str], ...] = ()

    @classmethod
    def parse(cls, listener_zones: str, cidr_blocks: str) -> ZoneRules:
        return cls(parse_listener_zones(listener_zones), parse_cidr_blocks(cidr_blocks))

    def connection(self, listener: str, address: str) -> ClientConnection:
        """A new connection on `listener` from `address` (an IP, no port)."""
        conn = ClientConnection(listener, "/" + address if address else "")
        zone = self.listener_zones.get(listener)
        if zone is not None:
            conn.zone, conn.how = zone, "listener"
        elif self.cidr_blocks and address:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return conn
            for net, zone in self.cidr_blocks:
                if ip.version == net.version and ip in net:
                    conn.zone, conn.how = zone, "cidr"
                    break
        return conn


BROKER_CLIENT_ID = re.compile(r"tidelog-broker-(\d+)")
"""The client.id brokers use between themselves (`net/peer.py`)."""


def learn(conn: ClientConnection, client_id: str | None, rack_id: str | None,
          broker_zone: Callable[[int], str | None] = lambda _n: None) -> None:
    """A request came on `conn`: on its first, a broker peer is told by its client.id
    (and put in that broker's zone, whatever the listener or address said); until the
    zone is known, a client.id token, else the rack the request names."""
    if not conn.named:
        conn.named = True
        peer = BROKER_CLIENT_ID.fullmatch(client_id or "")
        if peer is not None:
            conn.peer_broker = int(peer.group(1))
            conn.zone, conn.how = broker_zone(conn.peer_broker), "broker"
            return
    if conn.zone is not None or conn.peer_broker is not None:
        return
    zone = zone_in_client_id(client_id)
    if zone is not None:
        conn.zone, conn.how = zone, "client_id"
    elif rack_id:
        conn.zone, conn.how = rack_id, "rack"


def zone_in_client_id(client_id: str | None) -> str | None:
    """`tidelog_az=ZONE` (or `automq_az=`, `ws_az=`, `diskless_az=`) as a `key=value`
    token anywhere in a client.id; tokens split on `,`, `;`, `&` and white space."""
    if not client_id or "=" not in client_id:
        return None
    for token in _TOKENS.split(client_id):
        key, sep, value = token.partition("=")
        if sep and value and key.lower() in CLIENT_ID_KEYS:
            return value
    return None


def parse_listener_zones(value: str) -> dict[str, str]:
    """`listener.zones`: `NAME:zone,...`."""
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in value.split(","))):
        name, sep, zone = item.partition(":")
        if not sep or not name.strip() or not zone.strip():
            raise ConfigError(f"listener.zones: {item!r} is not NAME:zone")
        out[name.strip().upper()] = zone.strip()
    return out


def parse_cidr_blocks(value: str) -> tuple[tuple[Network, str], ...]:
    """`zone.cidr.blocks`: `zone@10.0.0.0/20,...` (IPv4 or IPv6); the most specific
    block wins where blocks overlap."""
    out: list[tuple[Network, str]] = []
    for item in filter(None, (i.strip() for i in value.split(","))):
        zone, sep, block = item.partition("@")
        try:
            if not sep or not zone.strip():
                raise ValueError("no zone@")
            out.append((ipaddress.ip_network(block.strip(), strict=False), zone.strip()))
        except ValueError as exc:
            raise ConfigError(f"zone.cidr.blocks: {item!r} is not zone@CIDR ({exc})") from exc
    return tuple(sorted(out, key=lambda b: -b[0].prefixlen))
