"""Broker membership: each broker registers `/brokers/<node>` under a lease and keeps it
alive; everyone follows the registry through a watch.

Self-fencing: `ack_deadline` is the local monotonic time at which the last successful
renewal was *sent*, plus the TTL, minus a margin. The database's expiry is at least that
late (it starts counting when the renewal arrives), so anything acknowledged before the
deadline was acknowledged while the lease was certainly alive. A renewal refused because
the lease is gone (expired, or revoked behind the broker's back) calls `on_lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tidelog.metadata.base import (
    Fenced,
    LeaseLost,
    MetadataError,
    MetadataStore,
    WatchEvent,
    follow,
)

log = logging.getLogger(__name__)

BROKERS = "/brokers/"


class NodeIdInUse(Exception):
    """Another live broker registered this `node.id`."""


@dataclass(frozen=True, slots=True)
class BrokerRecord:
    node_id: int
    host: str
    port: int
    rack: str | None
    wal: str
    epoch: int
    """The broker's WAL epoch at this start (its incarnation)."""
    endpoints: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Advertised (host, port) by listener name; `host`/`port` are the first listener's."""

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def decode(value: bytes) -> BrokerRecord:
        v = json.loads(value)
        return BrokerRecord(int(v["node_id"]), v["host"], int(v["port"]), v.get("rack"),
                            v.get("wal", ""), int(v.get("epoch", 0)),
                            {str(k): (str(h), int(p))
                             for k, (h, p) in (v.get("endpoints") or {}).items()})


def broker_key(node_id: int) -> str:
    return f"{BROKERS}{node_id}"


class Membership:
    def __init__(
        self,
        meta: MetadataStore,
        record: BrokerRecord,
        *,
        ttl: float = 9.0,
        interval: float = 2.0,
        margin: float = 1.0,
        on_deadline: Callable[[float], None] = lambda _d: None,
        on_lost: Callable[[str], None] = lambda _r: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < margin < ttl or interval >= ttl - margin:
            raise ValueError(f"lease ttl {ttl}s must exceed the heartbeat interval "
                             f"{interval}s plus the margin {margin}s")
        self.meta = meta
        self.record = record
        self.ttl = ttl
        self.interval = interval
        self.margin = margin
        self.lease = 0
        self.ack_deadline = 0.0
        self.live: dict[int, BrokerRecord] = {}
        """Every registered broker, this one included, by node id."""
        self.changed = asyncio.Event()
        """Set at each registry change (and cleared by whoever waits on it)."""
        self.listeners: list[Callable[[], None]] = []
        """Called at each registry change (the controller's takeover check)."""
        self._on_deadline = on_deadline
        self._on_lost = on_lost
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._lost: str | None = None

    @property
    def node_id(self) -> int:
        return self.record.node_id

    async def register(self) -> None:
        """Take the lease and the registration. A registration still held waits out one
        session timeout (a broker restarted after kill -9 finds its previous lease alive
        until the database expires it); held past that, it is another live broker:
        `NodeIdInUse`."""
        sent = self._clock()
        self.lease = await self.meta.grant_lease(self.ttl)
        give_up = self._clock() + self.ttl + self.margin
        waited = False
        while True:
            try:
                await self.meta.put_if(broker_key(self.node_id), self.record.encode(), 0,
                                       lease=self.lease)
                break
            except Fenced:
                pass
            entry = await self.meta.get(broker_key(self.node_id))
            holder = BrokerRecord.decode(entry.value) if entry else None
            if self._clock() >= give_up:
                await self.meta.revoke_lease(self.lease)
                self.lease = 0
                where = f" ({holder.host}:{holder.port})" if holder else ""
                raise NodeIdInUse(f"node.id {self.node_id} is already registered by a live "
                                  f"broker{where}; give each broker its own node.id")
            if not waited:
                log.warning("node.id %d is still registered (a previous run of this broker, "
                            "or another one): waiting up to %.0fs for it to expire",
                            self.node_id, self.ttl + self.margin)
                waited = True
            await asyncio.sleep(0.25)
            sent = self._clock()
            await self.meta.keep_alive(self.lease)  # ours must outlive the wait
        self._set_deadline(sent)
        listing = await self.meta.list_all(BROKERS)
        self.live = {r.node_id: r for r in (BrokerRecord.decode(e.value) for e in listing)}
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_alive(), name="broker-lease"),
                       loop.create_task(follow(
                           self.meta, BROKERS, listing.revision, self._on_broker,
                           what="broker registry",
                           known=lambda: [f"{BROKERS}{n}" for n in self.live]),
                           name="broker-registry")]
        log.info("broker %d registered (lease %d, ttl %.1fs); %d brokers live", self.node_id,
                 self.lease, self.ttl, len(self.live))

    async def update(self, **changes: object) -> None:
        """Rewrite this broker's registration (its bound port, once known)."""
        import dataclasses

        self.record = dataclasses.replace(self.record, **changes)  # type: ignore[arg-type]
        await self.meta.put(broker_key(self.node_id), self.record.encode(), lease=self.lease)
        self.live[self.node_id] = self.record

    def remaining(self) -> float:
        """Seconds this broker may still acknowledge writes (0 once fenced)."""
        return max(0.0, self.ack_deadline - self._clock())

    async def close(self) -> None:
        """Leave the cluster: the registration (and whatever else the lease holds, the
        controller key) goes at once instead of at expiry."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.lease and self._lost is None:
            try:
                await self.meta.revoke_lease(self.lease)
            except MetadataError as exc:
                log.warning("could not revoke lease %d (it expires on its own): %s",
                            self.lease, exc)
        self.ack_deadline = 0.0

    def _set_deadline(self, sent: float) -> None:
        self.ack_deadline = sent + self.ttl - self.margin
        self._on_deadline(self.ack_deadline)

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            self.ack_deadline = 0.0
            self._on_deadline(0.0)
            log.error("broker %d: %s; acknowledging nothing more", self.node_id, reason)
            self._on_lost(reason)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            sent = self._clock()
            try:
                await asyncio.wait_for(self.meta.keep_alive(self.lease),
                                       max(self.ack_deadline - sent, 0.1))
            except LeaseLost as exc:
                self._lose(f"lease {self.lease} is gone ({exc})")
                return
            except MetadataError as exc:
                log.warning("lease renewal failed (%.1fs left): %s", self.remaining(), exc)
                continue
            except TimeoutError:
                log.warning("lease renewal timed out (%.1fs left)", self.remaining())
                continue
            # the registration's deletion while the lease lives is seen by the watch
            self._set_deadline(sent)

    async def _on_broker(self, event: WatchEvent) -> None:
        node = int(event.key[len(BROKERS):])
        if event.value is None:
            if self.live.pop(node, None) is not None:
                log.info("broker %d left the cluster", node)
            if node == self.node_id and self._tasks:
                self._lose("registration removed (lease revoked or expired)")
        else:
            self.live[node] = BrokerRecord.decode(event.value)
        self.changed.set()
        for listener in self.listeners:
            listener()
