"""Build a WAL from `wal.uri`.

- `file:///abs/path/wal`, `file://./relative/path` (also `file://relative/path`; resolved
  against the current directory now, so a later `chdir` does not move the WAL) or a plain
  path: `FileWAL`.
- `memory://` (a fresh store) or `memory://name` (a process-wide named store, so an
  in-process restart finds its records again): `MemoryWAL`.

Query parameters set options (`file:///data/wal?capacity=1GiB&append_timeout=5`); keyword
options passed to `open_wal` win over them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tidelog.stream.wal.base import WAL
from tidelog.stream.wal.file_wal import FileWAL
from tidelog.stream.wal.memory_wal import MemoryWAL, named_store

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`"2GiB"`, `"512M"`, `"4096"` -> bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


_OPTION_PARSERS: dict[str, Callable[[str], Any]] = {
    "capacity": parse_size,
    "max_write_bytes": parse_size,
    "append_timeout": float,
}
_FILE_OPTIONS = {"capacity", "append_timeout", "max_write_bytes"}
_MEMORY_OPTIONS = {"capacity", "append_timeout"}


def open_wal(uri: str, **options: Any) -> WAL:
    """A WAL (not yet opened: call `open(epoch)`) for `uri`."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        if scheme == "file":
            path = _file_path(parts.netloc, unquote(parts.path), uri)
            query = parts.query
        else:
            path, query = uri, ""
        kwargs = _options(query, options, _FILE_OPTIONS, uri)
        return FileWAL(path, **kwargs)
    if scheme == "memory":
        kwargs = _options(parts.query, options, _MEMORY_OPTIONS, uri)
        name = parts.netloc + parts.path
        store = named_store(name) if name else None
        return MemoryWAL(store=store, **kwargs)
    raise ValueError(f"unsupported WAL URI {uri!r}: use file://, a path, or memory://")


def _file_path(netloc: str, path: str, uri: str) -> str:
    if netloc in ("", "localhost"):
        if not path:
            raise ValueError(f"no path in {uri!r}")
        return path
    # `file://./x`, `file://../x` and, as people write it, `file://data/x`: relative paths.
    return os.path.abspath(netloc + path)


def _options(query: str, options: dict[str, Any], allowed: set[str], uri: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in allowed:
            raise ValueError(f"unknown WAL option {key!r} in {uri!r}")
        merged[key] = _OPTION_PARSERS[key](value)
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"unknown WAL option {key!r} for {uri!r}")
        merged[key] = value
    return merged
