"""Build a WAL from `wal.uri`.

- `file:///abs/path/wal`, `file://./relative/path` (also `file://relative/path`; resolved
  against the current directory now, so a later `chdir` does not move the WAL) or a plain
  path: `FileWAL`, on a regular file or a raw block device (`file:///dev/nvme1n1`);
  `direct=true` asks for O_DIRECT.
- `s3://bucket/prefix` (also `gs://`, `az://`): `ObjectWAL` over that prefix.
  `batch.interval.ms` (default 250) and `batch.bytes` (default 8 MiB) set its group
  commit; every other query key is the object store's (`endpoint`, `region`, ...: see
  `tidelog.objectstore.uri`).
- `memory://` (a fresh store) or `memory://name` (a process-wide named store, so an
  in-process restart finds its records again): `MemoryWAL`.

Query parameters set options (`file:///data/wal?capacity=1GiB&append_timeout=5`); keyword
options passed to `open_wal` win over them. `emulate.*` keys (`tidelog.objectstore.latency`)
add emulated latency and errors: a file or memory WAL is wrapped in a `LatencyWAL`, an
object WAL's store in a `LatencyObjectStore` (the delay lands on each PUT).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.latency import LatencyObjectStore, LatencyProfile, split_emulation
from tidelog.objectstore.uri import open_object_store
from tidelog.stream.wal.base import WAL
from tidelog.stream.wal.file_wal import FileWAL
from tidelog.stream.wal.latency import LatencyWAL
from tidelog.stream.wal.memory_wal import MemoryWAL, named_store
from tidelog.stream.wal.object_wal import ObjectWAL

OBJECT_WAL_SCHEMES = ("s3", "gs", "az")
"""URI schemes that make an `ObjectWAL`."""

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`"2GiB"`, `"512M"`, `"4096"` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"not a boolean: {text!r}")
    return value in ("true", "1", "yes")


_OPTION_PARSERS: dict[str, Callable[[str], Any]] = {
    "capacity": parse_size,
    "max_write_bytes": parse_size,
    "append_timeout": float,
    "direct": parse_bool,
    "batch_interval": lambda ms: float(ms) / 1000,
    "batch_bytes": parse_size,
}
_QUERY_NAMES = {"batch.interval.ms": "batch_interval", "batch.bytes": "batch_bytes"}
"""Query keys spelled differently from the keyword options."""
_FILE_OPTIONS = {"capacity", "append_timeout", "max_write_bytes", "direct"}
_MEMORY_OPTIONS = {"capacity", "append_timeout"}
_OBJECT_OPTIONS = {"capacity", "append_timeout", "batch_interval", "batch_bytes"}

StoreWrapper = Callable[[ObjectStore], ObjectStore]


def open_wal(uri: str, *, wrap_store: StoreWrapper | None = None, **options: Any) -> WAL:
    """A WAL (not yet opened: call `open(epoch)`) for `uri`.

    `wrap_store` wraps an object WAL's store (e.g. to count its requests)."""
    plain, profile = split_emulation(uri)
    parts = urlsplit(plain)
    scheme = parts.scheme.lower()
    wal: WAL
    if scheme in OBJECT_WAL_SCHEMES:
        return _object_wal(parts, profile, wrap_store, options, uri)
    if scheme in ("", "file"):
        if scheme == "file":
            path = _file_path(parts.netloc, unquote(parts.path), uri)
            query = parts.query
        else:
            path, query = plain, ""
        wal = FileWAL(path, **_options(query, options, _FILE_OPTIONS, uri))
    elif scheme == "memory":
        kwargs = _options(parts.query, options, _MEMORY_OPTIONS, uri)
        name = parts.netloc + parts.path
        store = named_store(name) if name else None
        wal = MemoryWAL(store=store, **kwargs)
    else:
        raise ValueError(
            f"unsupported WAL URI {uri!r}: use file://, a path, s3://, gs://, az:// or memory://"
        )
    return LatencyWAL(wal, profile) if profile is not None else wal


def ring_file_path(uri: str) -> str | None:
    """The file of a `FileWAL` URI (what another broker reads by position), else None."""
    plain, _profile = split_emulation(uri)
    parts = urlsplit(plain)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _file_path(parts.netloc, unquote(parts.path), uri)
    return plain.partition("?")[0] if scheme == "" else None


def _object_wal(
    parts: SplitResult,
    profile: LatencyProfile | None,
    wrap_store: StoreWrapper | None,
    options: dict[str, Any],
    uri: str,
) -> ObjectWAL:
    """The WAL's own keys from the query; the rest opens the object store."""
    ours = {"capacity", "append_timeout", *_QUERY_NAMES}
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    wal_query = urlencode([(k, v) for k, v in pairs if k in ours])
    store_uri = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in pairs
                                                           if k not in ours])))
    kwargs = _options(wal_query, options, _OBJECT_OPTIONS, uri)
    store = open_object_store(store_uri)
    if profile is not None:
        store = LatencyObjectStore(store, profile)
    if wrap_store is not None:
        store = wrap_store(store)
    name = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return ObjectWAL(store, name=name, owns_store=True, **kwargs)


def _file_path(netloc: str, path: str, uri: str) -> str:
    if netloc in ("", "localhost"):
        if not path:
            raise ValueError(f"no path in {uri!r}")
        return path
    # `file://./x`, `file://../x` and, as people write it, `file://data/x`: relative paths.
    return os.path.abspath(netloc + path)


def _options(query: str, options: dict[str, Any], allowed: set[str], uri: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for query_key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        key = _QUERY_NAMES.get(query_key, query_key)
        if key not in allowed:
            raise ValueError(f"unknown WAL option {key!r} in {uri!r}")
        merged[key] = _OPTION_PARSERS[key](value)
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"unknown WAL option {key!r} for {uri!r}")
        merged[key] = value
    return merged
