"""Failover by WAL takeover (docs/design/0002-failover.md).

`/wals/<node>` says who writes a broker's WAL and at which epoch: the broker at its start
(`claim_own_wal`), the controller when the broker's registration is gone (it names a
`taker` and bumps the epoch), the taker when the WAL's records are all in objects
(`done`). The taker opens the dead WAL at the new epoch (which fences its writer), saves
its tail into objects with the streams' new ends and no owner, in commits compared on
every stream and on the WAL's record, empties the WAL and closes it; the controller then
places the streams on live brokers like new partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from tidelog.controller.membership import BROKERS, Membership
from tidelog.metadata.base import Fenced, MetadataError, MetadataStore, Txn, WatchEvent, follow
from tidelog.stream.engine import STREAMS, StreamEngine, decode_stream
from tidelog.stream.wal.base import WAL

log = logging.getLogger(__name__)

WALS = "/wals/"


def wal_key(node: int) -> str:
    return f"{WALS}{node}"


@dataclass(slots=True)
class WalOwner:
    """The value of `/wals/<node>`."""

    node: int
    epoch: int
    uri: str = ""
    """Where the WAL is, without its query (credentials stay in each broker's `wal.uri`)."""
    rack: str | None = None
    taker: int | None = None
    """The broker replaying the WAL into objects (the owner is gone)."""
    done: bool = False
    """The WAL's records are all in objects and the WAL is empty."""
    version: int = 0

    @property
    def pending(self) -> bool:
        """A takeover was assigned and is not finished."""
        return self.taker is not None and not self.done

    def encode(self) -> bytes:
        rec = asdict(self)
        rec.pop("version")
        rec["owner"] = rec.pop("node")  # the key's name before takeovers
        return json.dumps({k: v for k, v in rec.items() if v not in (None, False, "")}
                          ).encode()

    @classmethod
    def decode(cls, node: int, value: bytes, version: int) -> WalOwner:
        v = json.loads(value)
        return cls(node, int(v["epoch"]), v.get("uri", ""), v.get("rack"), v.get("taker"),
                   bool(v.get("done", False)), version)


async def claim_own_wal(meta: MetadataStore, node: int, uri: str, rack: str | None,
                        wait: float = 0.2) -> int:
    """This broker's WAL epoch, one above any previous writer's (fencing them). While
    another broker is taking the WAL over, wait for it to finish: the WAL is then empty
    and this broker's partitions are placed elsewhere (docs/design/0002, restart)."""
    key = wal_key(node)
    announced = False
    while True:
        entry = await meta.get(key)
        old = WalOwner.decode(node, entry.value, entry.version) if entry else None
        if old is not None and old.pending:
            if not announced:
                log.warning("broker %d's WAL is being taken over by broker %s: waiting for "
                            "it to finish", node, old.taker)
                announced = True
            await asyncio.sleep(wait)
            continue
        epoch = old.epoch + 1 if old else 1
        try:
            await meta.put_if(key, WalOwner(node, epoch, uri, rack).encode(),
                              old.version if old else 0)
        except Fenced:
            continue  # a takeover was assigned meanwhile: look again
        if old is not None and old.done:
            log.info("broker %d's WAL was taken over by broker %s: starting empty", node,
                     old.taker)
        return epoch


OpenWal = Callable[[str], WAL]
"""Opens (not yet `open`s) a WAL at a recorded location, with this broker's options."""


class Takeovers:
    """Both sides of WAL takeover: on the controller, assigning a taker to the WAL of each
    broker whose registration is gone; on every broker, running the takeovers it is
    assigned."""

    def __init__(self, meta: MetadataStore, engine: StreamEngine, membership: Membership,
                 open_wal: OpenWal, is_controller: Callable[[], bool],
                 restart_grace: float = 9.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.meta = meta
        self.engine = engine
        self.membership = membership
        self.node_id = membership.node_id
        self._open_wal = open_wal
        self._is_controller = is_controller
        self._clock = clock
        self.wals: dict[int, WalOwner] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._check = asyncio.Event()
        self._restart_grace = restart_grace
        self._since = clock()
        self._seen_live: set[int] = set()
        """Brokers seen registered while this broker ran: one that goes is taken over at
        once; one never seen (down when this controller started: the whole cluster may be
        restarting) only after `restart_grace`, so it can come back to its own WAL."""
        # metrics
        self.takeovers = 0
        self.takeovers_abandoned = 0
        self.replayed_bytes = 0
        self.last_takeover_seconds = 0.0
        self.assigned = 0

    async def start(self) -> None:
        listing = await self.meta.list_all(WALS)
        for e in listing:
            self._apply(e.key, e.value, e.version)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(follow(self.meta, WALS, listing.revision, self._on_wal,
                                    what="WAL owners",
                                    known=lambda: [wal_key(n) for n in self.wals]),
                             name="wal-owners"),
            loop.create_task(self._assign_loop(), name="wal-takeover-assign"),
        ]
        self.membership.listeners.append(self.poke)
        self.poke()

    async def stop(self) -> None:
        if self.poke in self.membership.listeners:
            self.membership.listeners.remove(self.poke)
        for task in [*self._tasks, *self._running.values()]:
            task.cancel()
        for task in [*self._tasks, *self._running.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._running = [], {}

    def poke(self) -> None:
        """Something changed (a broker came or went, a WAL record, a new controller):
        the controller looks for WALs to assign."""
        self._seen_live.update(self.membership.live)
        self._check.set()

    # ---- following /wals/ ----------------------------------------------------------

    async def _on_wal(self, event: WatchEvent) -> None:
        self._apply(event.key, event.value, event.version)

    def _apply(self, key: str, value: bytes | None, version: int) -> None:
        node = int(key[len(WALS):])
        if value is None:
            self.wals.pop(node, None)
            return
        rec = WalOwner.decode(node, value, version)
        self.wals[node] = rec
        if rec.pending and rec.taker == self.node_id and node not in self._running:
            self._running[node] = asyncio.get_running_loop().create_task(
                self._take_over(rec), name=f"takeover-{node}")
        self.poke()

    # ---- the controller: assigning takers --------------------------------------------

    async def _assign_loop(self) -> None:
        while True:
            await self._check.wait()
            self._check.clear()
            if not self._is_controller():
                continue
            try:
                await self.assign()
            except MetadataError as exc:
                log.warning("assigning WAL takeovers failed (retrying): %s", exc)
                await asyncio.sleep(1.0)
                self.poke()

    async def assign(self) -> None:
        """Give each WAL that needs one a taker: its owner's registration is gone and it
        was not taken over since, or its taker died before finishing."""
        live = self.membership.live
        self._seen_live.update(live)
        waiting = self._since + self._restart_grace - self._clock()
        for node, rec in sorted(self.wals.items()):
            if rec.done and rec.taker is not None:
                continue  # taken over; the owner, when back, claims it afresh
            if rec.pending:
                if rec.taker in live:
                    continue  # under way
            elif node in live:
                continue  # its owner is up
            elif node not in self._seen_live and waiting > 0:
                asyncio.get_running_loop().call_later(waiting, self.poke)
                continue  # maybe restarting with the rest of the cluster: give it a moment
            taker = self._choose(node, rec)
            if taker is None:
                log.warning("broker %d's WAL needs a taker and no other broker is live",
                            node)
                continue
            new = replace(rec, epoch=rec.epoch + 1, taker=taker, done=False)
            txn = Txn(compares=[(wal_key(node), rec.version), (f"{BROKERS}{node}", 0)],
                      puts=[(wal_key(node), new.encode())])
            try:
                await self.meta.commit(txn)
            except Fenced:
                continue  # the owner came back, or the record moved on: the watch says
            self.assigned += 1
            log.warning("broker %d is gone: broker %d takes over its WAL (epoch %d)%s", node,
                        taker, new.epoch,
                        f" from broker {rec.taker}, which died during it" if rec.pending
                        else "")

    def _choose(self, node: int, rec: WalOwner) -> int | None:
        running: dict[int, int] = {}
        for r in self.wals.values():
            if r.pending and r.taker is not None:
                running[r.taker] = running.get(r.taker, 0) + 1
        candidates = [b for n, b in self.membership.live.items() if n != node]
        if not candidates:
            return None
        best = min(candidates, key=lambda b: (b.rack != rec.rack, running.get(b.node_id, 0),
                                              b.node_id))
        return best.node_id

    # ---- the taker ------------------------------------------------------------------

    async def _take_over(self, rec: WalOwner) -> None:
        started = self._clock()
        node = rec.node
        log.info("taking over broker %d's WAL (epoch %d)", node, rec.epoch)
        try:
            wal = self._open_wal(rec.uri)
            await wal.open(rec.epoch)  # fences the dead writer before anything is read
            try:
                streams = [m for m in (decode_stream(e.key, e.value, e.version)
                                       for e in await self.meta.list_all(STREAMS))
                           if m.owner == node]
                key = wal_key(node)

                def extra(txn: Txn, last: bool) -> None:
                    txn.compares.append((key, rec.version))
                    if last:
                        txn.puts.append((key, replace(rec, done=True).encode()))

                records, size = await self.engine.save_wal_tail(wal, streams, extra)
                with contextlib.suppress(Exception):  # the WAL is done either way
                    await wal.reset()
            finally:
                with contextlib.suppress(Exception):
                    await wal.close()
        except Fenced:
            self.takeovers_abandoned += 1
            log.warning("takeover of broker %d's WAL abandoned: another taker or its owner "
                        "moved it on", node)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.takeovers_abandoned += 1
            log.error("takeover of broker %d's WAL failed (the controller assigns it again "
                      "once this broker's lease ends, or on the next try): %r", node, exc)
            self._running.pop(node, None)
            await asyncio.sleep(1.0)
            current = self.wals.get(node)
            if current is not None and current.pending and current.taker == self.node_id:
                self._apply(wal_key(node), current.encode(), current.version)
            return
        finally:
            if self._running.get(node) is asyncio.current_task():
                self._running.pop(node, None)
        took = self._clock() - started
        self.takeovers += 1
        self.replayed_bytes += size
        self.last_takeover_seconds = took
        log.warning("took over broker %d's WAL in %.3fs: %d records (%d bytes) saved, %d "
                    "partitions released for placement", node, took, records, size,
                    len(streams))
