"""The object lifecycle: which objects metadata references, which are garbage, and the
one place that deletes objects from the object store.

Keys: `/objects/<id>` (object key, size, block index) for live objects and
`/garbage/<id>` (object key, since) for objects on their way out. An object is written
under an *intent*: a garbage record put before its PUT and removed by the same metadata
commit that references it. A crash between the PUT and that commit leaves the intent, so
the orphan is deleted later instead of leaking. Deletion is the reverse: a commit moves
the record from `/objects/` to `/garbage/` (no reference is left to dangle), readers
already on the object get `grace` seconds to finish, then the object is deleted from the
store and only then its garbage record. Every step is idempotent, so kill -9 anywhere
leaves either a live reference to an existing object or a garbage record to finish.

On a cluster the collector may run on another broker than the writer: the commit that
references an object compares its intent's version, and the collector marks an intent
`deleting` (a compare-and-set) before it deletes any byte, so a write slower than the
grace period fails its commit instead of referencing a deleted object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tidelog.metadata.base import MAX_TXN_OPS, Entry, Fenced, MetadataStore, Txn
from tidelog.objectstore.base import ObjectStore
from tidelog.stream.object_format import BlockIndex, ObjectBuilder
from tidelog.stream.object_index import ObjectIndex

log = logging.getLogger(__name__)

OBJECTS = "/objects/"
GARBAGE = "/garbage/"

_OBJECT_KEY = re.compile(r"(?:.*/)?[0-9a-f]{4}/(?:ss|s)/\d{20}\.obj")
"""The keys `object_key` makes (after any prefix the store shares with a WAL)."""


def meta_key(prefix: str, n: int) -> str:
    return f"{prefix}{n:020d}"


def object_key(object_id: int, kind: str) -> str:
    """Keys spread over hashed prefixes so S3 partitions the load; `kind` is `ss` (stream
    set object) or `s` (stream object)."""
    h = hashlib.sha1(str(object_id).encode()).hexdigest()[:4]
    return f"{h}/{kind}/{object_id:020d}.obj"


def object_id(key: str) -> int:
    return int(key.rsplit("/", 1)[1].split(".")[0])


def object_kind(key: str) -> str:
    return key.split("/")[1]


@dataclass(slots=True)
class ObjectInfo:
    size: int
    version: int
    """Metadata version of the object's record: commits that change it compare it."""


@dataclass(slots=True)
class Garbage:
    key: str
    since: float
    """Wall-clock seconds when the object stopped being referenced (or was intended)."""
    version: int = 0
    """Metadata version of the record (0: not known; listed again before deleting)."""


class ObjectCatalog:
    def __init__(self, meta: MetadataStore, store: ObjectStore, index: ObjectIndex,
                 grace: float, wall_clock: Callable[[], float] = time.time) -> None:
        self.meta = meta
        self.store = store
        self.index = index
        self.grace = grace
        self._clock = wall_clock
        self.objects: dict[str, ObjectInfo] = {}
        self.garbage: dict[int, Garbage] = {}
        self._writing: set[str] = set()
        self._intents: dict[str, int] = {}
        """Metadata version of each intent this broker wrote and has not committed."""
        self.deleted = 0
        self.orphans_deleted = 0
        self._unnamed: dict[str, float] = {}
        """Objects the last audit found in the store with no record, and when first seen."""

    @property
    def stored_bytes(self) -> int:
        return sum(i.size for i in list(self.objects.values()))

    def load_objects(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.apply_object(e.value, e.version)

    def apply_object(self, value: bytes, version: int) -> bool:
        """Index an object record (loaded, or a watch event); False when what is indexed
        is as new already (our own commit came back through the watch)."""
        rec = json.loads(value)
        key = rec["key"]
        info = self.objects.get(key)
        if info is not None and info.version >= version:
            return False
        if info is not None:
            self.index.forget_object(key)
        self.index.add_object(key, [BlockIndex.from_list(b) for b in rec["blocks"]])
        self.objects[key] = ObjectInfo(rec.get("size", 0), version)
        return True

    def forget(self, object_id_: int) -> None:
        """An object record deleted elsewhere (unlinked by the collector)."""
        for key in [k for k in self.objects if object_id(k) == object_id_]:
            self.index.forget_object(key)
            del self.objects[key]

    async def load_garbage(self) -> None:
        self.garbage.clear()
        for e in await self.meta.list_all(GARBAGE):
            rec = json.loads(e.value)
            self.garbage[int(e.key[len(GARBAGE):])] = Garbage(rec["key"], rec["since"],
                                                              e.version)

    # ---- writing objects -----------------------------------------------------------

    async def new_object(self, kind: str) -> str:
        """A fresh object key, with its intent recorded before any byte is PUT."""
        oid = await self.meta.next_id("object")
        key = object_key(oid, kind)
        g = Garbage(key, self._clock())
        g.version = await self.meta.put_if(meta_key(GARBAGE, oid), _garbage_value(g), 0)
        self.garbage[oid] = g
        self._writing.add(key)
        self._intents[key] = g.version
        return key

    def reference(self, txn: Txn, key: str, builder: ObjectBuilder) -> None:
        """Add to `txn` the record that makes `key` live (and clears its intent)."""
        oid = object_id(key)
        txn.puts.append((meta_key(OBJECTS, oid), _object_value(key, builder.size,
                                                               builder.index)))
        txn.deletes.append(meta_key(GARBAGE, oid))
        intent = self._intents.get(key)
        if intent is not None:  # still ours: no collector started deleting it
            txn.compares.append((meta_key(GARBAGE, oid), intent))

    def referenced(self, rev: int, objects: Iterable[tuple[str, ObjectBuilder]]) -> None:
        """`txn` with `reference`s committed at `rev`: index the objects."""
        for key, builder in objects:
            self.index.add_object(key, builder.index)
            self.objects[key] = ObjectInfo(builder.size, rev)
            self.garbage.pop(object_id(key), None)
            self._writing.discard(key)
            self._intents.pop(key, None)

    def abandon(self, keys: Iterable[str]) -> None:
        """Writes that will never be committed: their intents make them garbage."""
        for key in keys:
            self._writing.discard(key)
            self._intents.pop(key, None)

    # ---- replacing blocks (compaction) -------------------------------------------------

    def unlink(self, txn: Txn, removed: dict[str, set[BlockIndex]]) -> list[
            tuple[str, list[BlockIndex] | None]]:
        """Add to `txn` the removal of `removed` blocks from their objects; an object left
        with no block becomes garbage. Returns what `unlinked` applies after the commit.

        Raises `KeyError` when an object is no longer live (a concurrent change)."""
        now = self._clock()
        out: list[tuple[str, list[BlockIndex] | None]] = []
        for key, gone in removed.items():
            info = self.objects[key]
            blocks = self.index.objects[key]
            oid = object_id(key)
            txn.compares.append((meta_key(OBJECTS, oid), info.version))
            left = [b for b in blocks if b not in gone]
            if left:
                txn.puts.append((meta_key(OBJECTS, oid), _object_value(key, info.size, left)))
                out.append((key, left))
            else:
                txn.deletes.append(meta_key(OBJECTS, oid))
                txn.puts.append((meta_key(GARBAGE, oid), _garbage_value(Garbage(key, now))))
                out.append((key, None))
        return out

    def unlinked(self, rev: int, changes: list[tuple[str, list[BlockIndex] | None]]) -> None:
        now = self._clock()
        for key, left in changes:
            self.index.forget_object(key)
            if left is None:
                self.objects.pop(key, None)
                self.garbage[object_id(key)] = Garbage(key, now)
            else:
                self.index.add_object(key, left)
                self.objects[key].version = rev

    # ---- garbage collection ----------------------------------------------------------

    async def unlink_unreferenced(self, starts: dict[int, int]) -> int:
        """Move objects no live stream needs (`starts`: each live stream's start offset)
        to garbage, in one commit; returns how many."""
        dead = self.index.unreferenced(starts)
        if dead:
            txn = Txn()
            changes = self.unlink(txn, {k: set(self.index.objects[k]) for k in dead})
            rev = await self.meta.commit(txn)
            self.unlinked(rev, changes)
            log.info("%d unreferenced objects are now garbage", len(dead))
        return len(dead)

    async def unlink_unreferenced_cluster(self, objects: list[Entry],
                                          starts: dict[int, int]) -> int:
        """The cluster form: `objects` and `starts` come from metadata listings (objects
        listed first, so every listed object's stream is in `starts` unless deleted), and
        each unlink compares the listed version; an object changed meanwhile stays."""
        now = self._clock()
        dead = []
        for e in objects:
            rec = json.loads(e.value)
            blocks = [BlockIndex.from_list(b) for b in rec["blocks"]]
            if not any(b.end_offset > starts.get(b.stream_id, b.end_offset) for b in blocks):
                dead.append((e, rec["key"]))
        unlinked = 0
        for i in range(0, len(dead), MAX_TXN_OPS // 3):
            txn = Txn()
            for e, key in dead[i:i + MAX_TXN_OPS // 3]:
                txn.compares.append((e.key, e.version))
                txn.deletes.append(e.key)
                txn.puts.append((meta_key(GARBAGE, object_id(key)),
                                 _garbage_value(Garbage(key, now))))
            try:
                await self.meta.commit(txn)
            except Fenced as exc:
                log.info("garbage collection raced with %d object changes; next round",
                         len(exc.keys))
                continue
            for e, key in dead[i:i + MAX_TXN_OPS // 3]:
                if key in self.objects and self.objects[key].version <= e.version:
                    self.index.forget_object(key)
                    del self.objects[key]
            unlinked += min(len(dead) - i, MAX_TXN_OPS // 3)
        if unlinked:
            log.info("%d unreferenced objects are now garbage", unlinked)
        return unlinked

    async def delete_expired(self) -> int:
        """Delete garbage older than the grace period from the store, then its record.
        Returns the number of objects deleted.

        Garbage is listed from metadata (other brokers' intents and unlinks included);
        each record is first marked `deleting` with a compare-and-set, which fails the
        commit of a writer still on its way to referencing the object."""
        await self.load_garbage()
        now = self._clock()
        deleted = 0
        for oid, g in sorted(self.garbage.items()):
            # uploads and compactions commit while this loop awaits DELETEs: an intent
            # listed above may have become a live object since, so look it up again
            if (self.garbage.get(oid) is not g or now - g.since < self.grace
                    or g.key in self._writing):
                continue
            gkey = meta_key(GARBAGE, oid)
            try:
                await self.meta.put_if(gkey, _garbage_value(g, deleting=True), g.version)
            except Fenced:
                continue  # committed (or marked) by someone else meanwhile
            await self.store.delete(g.key)  # first the bytes, then the record: idempotent
            await self.meta.delete(gkey)
            self.garbage.pop(oid, None)
            deleted += 1
            log.debug("deleted object %s", g.key)
        if deleted:
            log.info("deleted %d garbage objects past their grace period", deleted)
        self.deleted += deleted
        return deleted

    async def delete_orphans(self) -> int:
        """Audit the store against metadata: delete objects no record names (neither live
        nor garbage) that stayed so for the grace period. Intents make this rare (a crash
        between PUT and commit leaves a garbage record); what is left is a PUT that landed
        after a collector had given up on its intent, and objects written by hand. Returns
        how many were deleted (`tidelog_orphan_objects_deleted_total`).

        The store is listed before metadata: every object's record is written before its
        PUT, so a listed object without a record was either never recorded or deleted by
        a collector (bytes first) between the two listings, which the next audit tells
        apart (a collected object is gone from the store by then)."""
        listed = {k for k in await self.store.list() if _OBJECT_KEY.fullmatch(k)}
        named = {json.loads(e.value)["key"]
                 for prefix in (OBJECTS, GARBAGE) for e in await self.meta.list_all(prefix)}
        now = self._clock()
        self._unnamed = {k: self._unnamed.get(k, now) for k in listed - named}
        deleted = 0
        for key, since in sorted(self._unnamed.items()):
            if now - since < self.grace:
                continue
            log.warning("deleting object %s: in the store since %.0fs with no metadata "
                        "record (an orphan)", key, now - since)
            await self.store.delete(key)
            del self._unnamed[key]
            deleted += 1
        self.orphans_deleted += deleted
        return deleted


def _object_value(key: str, size: int, blocks: list[BlockIndex]) -> bytes:
    return json.dumps({"key": key, "size": size,
                       "blocks": [b.to_list() for b in blocks]}).encode()


def _garbage_value(g: Garbage, deleting: bool = False) -> bytes:
    rec: dict[str, object] = {"key": g.key, "since": g.since}
    if deleting:
        rec["deleting"] = True
    return json.dumps(rec).encode()
