"""Emulated storage latency and errors: a test and demo tool, off unless configured.

It lets one machine show the WAL trade-off the system is about (a file WAL answers in
milliseconds, an S3 WAL in hundreds of them) without the real services. Whatever is built
here says "EMULATED" in its description and logs a WARNING when it is created, so no figure
measured through it can pass for real storage performance.

Vocabulary:
- *profile*: what to emulate, `LatencyProfile`: a latency distribution (lognormal fitted to
  a median and a 99th percentile, or a constant), an optional transfer cost
  (`bytes / bandwidth`) and an error rate.
- *sampler*: draws delays and errors from a profile with its own random generator
  (`emulate.seed` makes runs repeatable).

Configured by URI query keys, taken off the URI before the real store sees it:

    emulate.latency=100ms/400ms   lognormal, median 100 ms, p99 400 ms (`5ms`: constant)
    emulate.bandwidth=100MiB      plus size / bandwidth per request (bytes per second)
    emulate.errors=0.01           1% of requests fail before reaching the store
    emulate.seed=7                repeatable draws

`objectstore.uri` and `wal.uri` both accept them (`open_with_emulation` here;
`tidelog.stream.wal.uri` for WALs).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidelog.objectstore.base import Buffer, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

EMULATE_PREFIX = "emulate."
_Z99 = 2.3263478740408408
"""The standard normal's 99th percentile: p99 = median * exp(sigma * _Z99) for a lognormal."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s)?\s*$", re.IGNORECASE)
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1e-3}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """`"100ms"`, `"0.5s"`, `"250us"`, `"20"` (milliseconds) -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _SECONDS[unit]


def _parse_rate(text: str) -> float:
    """`"100MiB"`, `"1g"`, `"5000"` -> bytes per second (binary units)."""
    match = _BYTES.match(text)
    if match is None:
        raise ValueError(f"not a byte rate: {text!r}")
    scale = 1 << (10 * " kmgt".index(match.group(2).lower() or " "))
    return float(match.group(1)) * scale


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """What to emulate; `median == p99` means a constant delay."""

    median: float = 0.0
    """Seconds."""
    p99: float = 0.0
    """Seconds; at least `median`."""
    bandwidth: float = 0.0
    """Bytes per second added as `size / bandwidth`; 0: no transfer cost."""
    error_rate: float = 0.0
    """Fraction of requests that fail."""
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.median < 0 or self.p99 < self.median:
            raise ValueError(f"need 0 <= median <= p99, got {self.median}, {self.p99}")
        if self.bandwidth < 0 or not 0 <= self.error_rate <= 1:
            raise ValueError("bandwidth must be >= 0 and the error rate in [0, 1]")

    @classmethod
    def from_options(cls, options: dict[str, str]) -> LatencyProfile:
        """From `emulate.*` keys (with the prefix); unknown keys are an error."""
        values: dict[str, str] = {}
        for key, value in options.items():
            name = key.removeprefix(EMULATE_PREFIX)
            if name not in ("latency", "bandwidth", "errors", "seed"):
                raise ValueError(f"unknown emulation option {key!r}")
            values[name] = value
        median = p99 = 0.0
        if "latency" in values:
            first, _, second = values["latency"].partition("/")
            median = parse_duration(first)
            p99 = parse_duration(second) if second else median
        return cls(
            median=median,
            p99=p99,
            bandwidth=_parse_rate(values["bandwidth"]) if "bandwidth" in values else 0.0,
            error_rate=float(values.get("errors", "0")),
            seed=int(values["seed"]) if "seed" in values else None,
        )

    def describe(self) -> str:
        """One line for logs and bench rows; always starts with "EMULATED"."""
        if self.p99 > self.median:
            what = f"lognormal latency median {self.median * 1e3:g} ms p99 {self.p99 * 1e3:g} ms"
        else:
            what = f"constant latency {self.median * 1e3:g} ms"
        if self.bandwidth:
            what += f", {self.bandwidth / (1 << 20):g} MiB/s"
        if self.error_rate:
            what += f", {self.error_rate:.2%} errors"
        return f"EMULATED {what}"


class LatencySampler:
    """Draws delays and failures from a profile."""

    def __init__(self, profile: LatencyProfile, rng: random.Random | None = None) -> None:
        self.profile = profile
        self._rng = rng or random.Random(profile.seed)
        self._mu = math.log(profile.median) if profile.median > 0 else 0.0
        self._sigma = (
            math.log(profile.p99 / profile.median) / _Z99 if profile.median > 0 else 0.0
        )

    def delay(self, nbytes: int = 0) -> float:
        """Seconds to wait for a request moving `nbytes`."""
        p = self.profile
        base = 0.0
        if p.median > 0:
            base = p.median if self._sigma == 0 else self._rng.lognormvariate(self._mu, self._sigma)
        return base + (nbytes / p.bandwidth if p.bandwidth else 0.0)

    def fails(self) -> bool:
        return self.profile.error_rate > 0 and self._rng.random() < self.profile.error_rate


def split_emulation(uri: str) -> tuple[str, LatencyProfile | None]:
    """`uri` without its `emulate.*` query keys, and the profile they describe (None: none)."""
    parts = urlsplit(uri)
    if EMULATE_PREFIX not in parts.query:
        return uri, None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    emulated = {k: v for k, v in pairs if k.startswith(EMULATE_PREFIX)}
    rest = [(k, v) for k, v in pairs if not k.startswith(EMULATE_PREFIX)]
    plain = urlunsplit(parts._replace(query=urlencode(rest)))
    return plain, LatencyProfile.from_options(emulated)


def open_with_emulation(uri: str, open_store: Callable[[str], ObjectStore]) -> ObjectStore:
    """`open_store(uri)`, wrapped in a `LatencyObjectStore` when `uri` asks for emulation."""
    plain, profile = split_emulation(uri)
    store = open_store(plain)
    return LatencyObjectStore(store, profile) if profile is not None else store


class LatencyObjectStore(ObjectStore):
    """Wraps `inner`: every request waits a drawn delay first; a drawn failure raises
    `ObjectStoreError` without reaching `inner` (so a failed write never lands).

    Reads wait for their transfer cost after the bytes arrive, writes before sending.
    """

    def __init__(
        self, inner: ObjectStore, profile: LatencyProfile, rng: random.Random | None = None
    ) -> None:
        self.inner = inner
        self.sampler = LatencySampler(profile, rng)
        self.description = f"{profile.describe()} object store over {inner!r}"
        log.warning("%s (test tool: not real storage performance)", self.description)

    def __repr__(self) -> str:
        return f"LatencyObjectStore({self.description})"

    async def _before(self, op: str, nbytes: int = 0) -> None:
        delay = self.sampler.delay(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)
        if self.sampler.fails():
            raise ObjectStoreError(f"{op}: emulated object-store error")

    async def _transfer(self, nbytes: int) -> None:
        bandwidth = self.sampler.profile.bandwidth
        if bandwidth and nbytes:
            await asyncio.sleep(nbytes / bandwidth)

    async def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        await self._before(f"put {key!r}", _nbytes(data))
        await self.inner.put(key, data)

    async def put_if_absent(self, key: str, data: bytes | memoryview) -> None:
        await self._before(f"put {key!r}", _nbytes(data))
        await self.inner.put_if_absent(key, data)

    async def get(self, key: str) -> bytes:
        await self._before(f"get {key!r}")
        data = await self.inner.get(key)
        await self._transfer(len(data))
        return data

    async def get_range(self, key: str, start: int, end: int) -> bytes | memoryview:
        await self._before(f"get {key!r}")
        data = await self.inner.get_range(key, start, end)
        await self._transfer(len(data))
        return data

    async def size(self, key: str) -> int:
        await self._before(f"head {key!r}")
        return await self.inner.size(key)

    async def delete(self, key: str) -> None:
        await self._before(f"delete {key!r}")
        await self.inner.delete(key)

    async def list(self, prefix: str = "") -> list[str]:
        await self._before(f"list {prefix!r}")
        return await self.inner.list(prefix)

    async def close(self) -> None:
        await self.inner.close()


def _nbytes(data: Buffer | Sequence[Buffer]) -> int:
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, bytes | bytearray):
        return len(data)
    return sum(_nbytes(part) for part in data)
