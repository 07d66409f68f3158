"""Fetch sessions (KIP-227): the broker remembers what a consumer fetches, so repeated
fetches of many partitions send only what changed, both ways."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field

# (topic name, partition) -> (fetch offset, partition max bytes)
PartitionKey = tuple[str, int]


@dataclass(slots=True)
class SessionPartition:
    fetch_offset: int
    max_bytes: int
    last_hw: int = -1
    last_start: int = -1
    leader_epoch: int = -1
    """The leader epoch the client believes current (-1: not checked), KIP-320."""


@dataclass(slots=True)
class FetchSession:
    session_id: int
    epoch: int  # the epoch the session's next (incremental) request must carry
    partitions: dict[PartitionKey, SessionPartition] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)


class SessionError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class FetchSessionCache:
    def __init__(self, max_sessions: int = 1000) -> None:
        self._sessions: OrderedDict[int, FetchSession] = OrderedDict()
        self._ids = itertools.count(1)
        self._max = max_sessions

    def new(self) -> FetchSession:
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        s = FetchSession(next(self._ids) & 0x7FFFFFFF or next(self._ids), 1)
        self._sessions[s.session_id] = s
        return s

    def get(self, session_id: int, epoch: int) -> FetchSession:
        s = self._sessions.get(session_id)
        if s is None:
            raise SessionError("fetch_session_id_not_found")
        if s.epoch != epoch:
            raise SessionError("invalid_fetch_session_epoch")
        self._sessions.move_to_end(session_id)
        s.last_used = time.monotonic()
        return s

    def remove(self, session_id: int) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)
