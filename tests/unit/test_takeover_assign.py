"""The controller's side of WAL takeover (`Takeovers.assign`) and a broker's claim of its
own WAL (`claim_own_wal`), on the embedded metadata store with a fake clock and a
registry the test sets: who gets a taker, when, and what a restart waits for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from tidelog.controller.membership import BROKERS, BrokerRecord
from tidelog.controller.takeover import Takeovers, WalOwner, claim_own_wal, wal_key
from tidelog.metadata.embedded import EmbeddedMetadataStore


@dataclass
class Registry:
    node_id: int = 1
    live: dict[int, BrokerRecord] = field(default_factory=dict)
    listeners: list[Any] = field(default_factory=list)

    def up(self, *nodes: int, rack: str | None = None) -> None:
        for n in nodes:
            self.live[n] = BrokerRecord(n, "127.0.0.1", 9000 + n, rack, "", 1)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def meta(tmp_path: Path) -> Any:
    store = EmbeddedMetadataStore(str(tmp_path / "meta.db"))
    yield store
    await store.close()


async def wal(meta: Any, node: int) -> WalOwner:
    entry = await meta.get(wal_key(node))
    return WalOwner.decode(node, entry.value, entry.version)


async def controller(meta: Any, registry: Registry, clock: Clock,
                     grace: float = 5.0) -> Takeovers:
    t = Takeovers(meta, cast(Any, None), cast(Any, registry), lambda uri: cast(Any, None),
                  lambda: True, restart_grace=grace, clock=clock)
    for e in await meta.list_all("/wals/"):
        t._apply(e.key, e.value, e.version)
    return t


async def test_a_broker_seen_leaving_is_taken_over_at_once_same_rack_first(meta: Any) -> None:
    for n, rack in ((1, "a"), (2, "b"), (3, "b")):
        await claim_own_wal(meta, n, f"file:///w/broker-{n}.wal", rack)
    registry, clock = Registry(), Clock()
    registry.up(1, rack="a")
    registry.up(2, 3, rack="b")
    t = await controller(meta, registry, clock)
    t.poke()  # it saw 1, 2 and 3 registered
    del registry.live[3]
    await t.assign()
    rec = await wal(meta, 3)
    assert (rec.taker, rec.epoch, rec.done, rec.uri) == (2, 2, False, "file:///w/broker-3.wal")
    assert t.assigned == 1
    for n in (1, 2):
        assert (await wal(meta, n)).taker is None  # their owners are up


async def test_a_broker_never_seen_gets_the_restart_grace(meta: Any) -> None:
    await claim_own_wal(meta, 2, "file:///w/broker-2.wal", None)
    registry, clock = Registry(), Clock()
    registry.up(1)
    t = await controller(meta, registry, clock, grace=5.0)
    await t.assign()
    assert (await wal(meta, 2)).taker is None  # maybe restarting with the cluster
    clock.t += 5.0
    await t.assign()
    assert (await wal(meta, 2)).taker == 1


async def test_a_registered_owner_wins_over_the_assignment(meta: Any) -> None:
    await claim_own_wal(meta, 2, "file:///w/broker-2.wal", None)
    registry, clock = Registry(), Clock()
    registry.up(1, 2)
    t = await controller(meta, registry, clock)
    t.poke()
    del registry.live[2]  # the controller's view lags: broker 2 is registered again
    await meta.put(f"{BROKERS}2", BrokerRecord(2, "127.0.0.1", 9002, None, "", 2).encode())
    await t.assign()
    assert (await wal(meta, 2)).taker is None and t.assigned == 0


async def test_a_taker_that_dies_is_replaced_with_a_higher_epoch(meta: Any) -> None:
    await claim_own_wal(meta, 3, "file:///w/broker-3.wal", None)
    registry, clock = Registry(), Clock()
    registry.up(1, 2, 3)
    t = await controller(meta, registry, clock)
    t.poke()
    del registry.live[3]
    await t.assign()
    first = await wal(meta, 3)
    t._apply(wal_key(3), first.encode(), first.version)
    assert first.taker == 1 and first.epoch == 2  # fewest running, then lowest id
    await t.assign()
    assert (await wal(meta, 3)).version == first.version  # under way: left alone
    del registry.live[first.taker]
    await t.assign()
    second = await wal(meta, 3)
    assert second.taker == 2 and second.epoch == 3 and not second.done


async def test_a_restart_waits_for_a_takeover_in_progress_and_then_starts_empty(
        meta: Any) -> None:
    await claim_own_wal(meta, 2, "file:///w/broker-2.wal", "a")
    rec = await wal(meta, 2)
    taking = WalOwner(2, rec.epoch + 1, rec.uri, rec.rack, taker=1)
    await meta.put_if(wal_key(2), taking.encode(), rec.version)
    claim = asyncio.create_task(claim_own_wal(meta, 2, rec.uri, "a", wait=0.01))
    await asyncio.sleep(0.1)
    assert not claim.done()
    cur = await wal(meta, 2)
    await meta.put_if(wal_key(2), WalOwner(2, cur.epoch, cur.uri, cur.rack, taker=1,
                                           done=True).encode(), cur.version)
    assert await asyncio.wait_for(claim, 5) == cur.epoch + 1
    after = await wal(meta, 2)
    assert after.taker is None and not after.done and after.node == 2
