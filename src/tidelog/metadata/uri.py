"""`metadata.uri` -> a store, so the server picks its backend from configuration alone."""

from __future__ import annotations

import os

from tidelog.metadata.base import MetadataStore
from tidelog.metadata.embedded import EmbeddedMetadataStore

DB_FILE = "metadata.db"


def open_metadata(uri: str) -> MetadataStore:
    """Open the store named by `uri`.

    `embedded://./data`, `embedded:///abs/dir` or a plain directory path give the SQLite
    store in `<dir>/metadata.db` (the directory is created); `postgresql://...` the
    cluster store (connected on first use).
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        directory = uri
    elif scheme == "embedded":
        directory = rest
    elif scheme in ("postgresql", "postgres"):
        from tidelog.metadata.postgres import PostgresMetadataStore

        return PostgresMetadataStore(uri)
    else:
        raise ValueError(
            f"metadata.uri {uri!r}: unknown scheme {scheme!r}; "
            "expected embedded://DIR, embedded:///ABS/DIR, a directory path or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    if not directory:
        raise ValueError(f"metadata.uri {uri!r}: no directory given")
    os.makedirs(directory, exist_ok=True)
    return EmbeddedMetadataStore(os.path.join(directory, DB_FILE))
