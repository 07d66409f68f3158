"""`follow`, the one watch loop every cache uses: resume after a failed watch from just
before the last change (a transaction cut short is replayed whole), rebuild from a listing
when the watch fell behind (deleting what the listing lacks), pass over a change that
fails to apply. The store is a script of watch streams, so every case is exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from tidelog.metadata.base import Entry, Listing, MetadataError, WatchEvent, follow


class Script:
    """Each `watch` call plays the next list of events; an exception in it ends that
    watch as a dropped connection would; the last watch ends the follow (store closed)."""

    def __init__(self, watches: list[list[WatchEvent | Exception]],
                 listing: Listing | None = None) -> None:
        self.watches = watches
        self.listing = listing or Listing([], 0)
        self.starts: list[int] = []

    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self.starts.append(from_revision)
        events = self.watches.pop(0)

        async def gen() -> AsyncIterator[WatchEvent]:
            for e in events:
                if isinstance(e, Exception):
                    raise e
                yield e

        return gen()

    async def list_all(self, prefix: str) -> Listing:
        return self.listing


def ev(key: str, value: bytes | None, version: int) -> WatchEvent:
    return WatchEvent(key, value, version)


async def run(script: Script, state: dict[str, bytes], **kw: Any) -> None:
    async def apply(e: WatchEvent) -> None:
        if e.value == b"bad":
            raise ValueError("unreadable")
        if e.value is None:
            state.pop(e.key, None)
        else:
            state[e.key] = e.value

    await asyncio.wait_for(follow(cast(Any, script), "/p/", 10, apply, what="test",
                                  retry=0, known=lambda: list(state), **kw), 5)


async def test_a_dropped_watch_resumes_before_the_last_change_and_replays_it() -> None:
    script = Script([
        [ev("/p/a", b"1", 11), ev("/p/b", b"1", 12), MetadataError("connection lost")],
        [ev("/p/b", b"1", 12), ev("/p/c", b"1", 12), ev("/p/a", None, 13)],
    ])
    state: dict[str, bytes] = {}
    await run(script, state)
    assert script.starts == [10, 11]  # from 11: all of revision 12 again
    assert state == {"/p/b": b"1", "/p/c": b"1"}


async def test_a_resync_deletes_what_the_listing_lacks_and_applies_the_rest() -> None:
    listing = Listing([Entry("/p/b", b"2", 20), Entry("/p/c", b"1", 19)], 20)
    script = Script([[ev("/p/a", b"1", 11), WatchEvent("/p/", None, 18, resync=True),
                      ev("/p/d", b"1", 21)]], listing)
    state: dict[str, bytes] = {"/p/z": b"old"}
    await run(script, state)
    assert state == {"/p/b": b"2", "/p/c": b"1", "/p/d": b"1"}


async def test_a_change_that_fails_to_apply_is_passed_over(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    script = Script([[ev("/p/a", b"bad", 11), ev("/p/b", b"1", 12)]])
    state: dict[str, bytes] = {}
    await run(script, state)
    assert state == {"/p/b": b"1"}
    assert "applying the change of /p/a failed" in caplog.text


async def test_a_custom_resync_replaces_the_default() -> None:
    seen: list[Listing] = []

    async def resync(listing: Listing) -> None:
        seen.append(listing)

    listing = Listing([Entry("/p/x", b"1", 5)], 30)
    script = Script([[WatchEvent("/p/", None, 25, resync=True)],
                     ], listing)
    await run(script, {}, resync=resync)
    assert seen == [listing]


async def test_follow_needs_a_way_to_resync() -> None:
    async def apply(e: WatchEvent) -> None:
        pass

    with pytest.raises(ValueError):
        await follow(cast(Any, Script([[]])), "/p/", 0, apply, what="test")
