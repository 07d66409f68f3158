"""One active controller, elected by lease: every broker tries to create `/controller`
under its own broker lease; the winner holds it until its lease ends (clean stop, or
expiry when it dies), and the others race again when the key goes.

The key lives under the broker's lease, so a controller that lost its lease has lost the
controllership with it: there is never a controller whose broker is not registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from tidelog.metadata.base import Fenced, MetadataError, MetadataStore, close_watch

log = logging.getLogger(__name__)

CONTROLLER = "/controller"


class ControllerElection:
    def __init__(self, meta: MetadataStore, node_id: int, lease: Callable[[], int],
                 on_change: Callable[[bool], None] = lambda _active: None) -> None:
        self.meta = meta
        self.node_id = node_id
        self._lease = lease
        self._on_change = on_change
        self.controller_id = -1
        """The current controller's node id (-1: none known)."""
        self.epoch = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.controller_id == self.node_id

    async def start(self) -> None:
        await self._campaign()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _campaign(self) -> int:
        """Try to become the controller; returns the revision the key was read at."""
        listing = await self.meta.list(CONTROLLER)
        entry = next((e for e in listing if e.key == CONTROLLER), None)
        if entry is None:
            epoch = await self.meta.next_id("controller")
            value = json.dumps({"node": self.node_id, "epoch": epoch}).encode()
            try:
                revision = await self.meta.put_if(CONTROLLER, value, 0, lease=self._lease())
            except Fenced:
                return await self._campaign()  # somebody else won: read who
            self._set(self.node_id, epoch)
            return revision
        rec = json.loads(entry.value)
        self._set(int(rec["node"]), int(rec["epoch"]))
        return listing.revision

    def _set(self, node: int, epoch: int) -> None:
        was = self.active
        self.controller_id, self.epoch = node, epoch
        if self.active != was:
            log.info("broker %d %s the controller (epoch %d)", self.node_id,
                     "is now" if self.active else "is no longer", epoch)
            self._on_change(self.active)

    async def _run(self) -> None:
        revision = 0
        while True:
            try:
                if revision == 0:
                    revision = await self._campaign()
                events = self.meta.watch(CONTROLLER, revision)
                try:
                    async for event in events:
                        revision = max(revision, event.version)
                        if event.key != CONTROLLER:
                            continue
                        if event.value is None or event.resync:
                            self._set(-1, self.epoch)
                            revision = await self._campaign()
                            break  # watch again from the campaign's revision
                        rec = json.loads(event.value)
                        self._set(int(rec["node"]), int(rec["epoch"]))
                    else:
                        return  # the store closed
                finally:
                    await close_watch(events)
            except asyncio.CancelledError:
                raise
            except MetadataError as exc:
                log.warning("controller election: %s (retrying)", exc)
                revision = 0
                await asyncio.sleep(1.0)
