"""The keyed workload every client test produces and checks: keys, headers and explicit
timestamps, compared per partition in order, with offsets dense from 0."""

from __future__ import annotations

import time
from dataclasses import dataclass

N_PARTITIONS = 8
N_MESSAGES = 10_000
N_CODEC_MESSAGES = 2_000
CODECS = ["gzip", "snappy", "lz4", "zstd"]


@dataclass(frozen=True, slots=True)
class Msg:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


def messages(n: int, base_ts: int | None = None) -> list[Msg]:
    """n keyed messages: 97 distinct keys, two headers (one empty), increasing explicit
    timestamps well in the past (so a broker stamping its own time would be caught)."""
    if base_ts is None:
        base_ts = int(time.time() * 1000) - 3_600_000
    return [
        Msg(key=f"key-{i % 97}".encode(), value=f"value-{i}-".encode() * (1 + i % 5),
            headers=(("h", str(i).encode()), ("empty", b"")), timestamp=base_ts + i)
        for i in range(n)
    ]


def expected_by_partition(
    sent: list[Msg], placed: list[tuple[int, int]]
) -> dict[int, list[tuple[int, Msg]]]:
    """What each partition must hold, in order: `placed[i]` is the (partition, offset) the
    producer was told for `sent[i]`."""
    out: dict[int, list[tuple[int, Msg]]] = {}
    for msg, (partition, offset) in zip(sent, placed, strict=True):
        out.setdefault(partition, []).append((offset, msg))
    for msgs in out.values():
        msgs.sort(key=lambda m: m[0])
    return out


def check(
    sent: list[Msg], placed: list[tuple[int, int]],
    got: dict[int, list[tuple[int, Msg]]], partitions: int = N_PARTITIONS,
) -> None:
    """Everything sent came back, partition by partition, in order, with the offsets the
    producer was told, dense from 0; each key stayed in one partition."""
    assert sum(len(v) for v in got.values()) == len(sent)
    position = {m.value: i for i, m in enumerate(sent)}
    assert len(position) == len(sent), "values must be unique"
    assert set(got) <= set(range(partitions))
    want = expected_by_partition(sent, placed)
    assert len(want) == partitions, f"keys landed in only {sorted(want)}"
    for p in range(partitions):
        g, w = got.get(p, []), want.get(p, [])
        assert [o for o, _ in g] == list(range(len(g))), f"partition {p}: offsets not dense"
        assert [o for o, _ in w] == list(range(len(w))), f"partition {p}: acked offsets"
        assert len(g) == len(w), f"partition {p}: {len(g)} consumed, {len(w)} sent"
        for (go, gm), (wo, wm) in zip(g, w, strict=True):
            assert go == wo
            assert gm == wm, f"partition {p} offset {go}: {gm} != {wm}"
        # producer order within a partition is send order
        indices = [position[m.value] for _, m in g]
        assert indices == sorted(indices), f"partition {p}: out of send order"
    key_partition: dict[bytes, int] = {}
    for p, msgs in got.items():
        for _, m in msgs:
            assert key_partition.setdefault(m.key, p) == p, f"key {m.key!r} in two partitions"


def placed_by_consumer(sent: list[Msg], got: dict[int, list[tuple[int, Msg]]]
                       ) -> list[tuple[int, int]]:
    """(partition, offset) of each sent message as found by the consumer, for producers
    that report no delivery (values are unique); a message not found fails the test."""
    where = {m.value: (p, o) for p, msgs in got.items() for o, m in msgs}
    missing = [m for m in sent if m.value not in where]
    assert not missing, f"{len(missing)} messages never consumed, first {missing[0]}"
    return [where[m.value] for m in sent]
