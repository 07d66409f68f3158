"""A real storage engine and topic manager for unit tests of the layers above them."""

from __future__ import annotations

from pathlib import Path

from tidelog.metadata.embedded import EmbeddedMetadataStore
from tidelog.objectstore.base import ObjectStore
from tidelog.partition.partition import describe
from tidelog.partition.topics import TopicManager
from tidelog.stream.engine import EngineConfig, StreamEngine
from tidelog.stream.wal.base import WAL


async def open_topics(tmp: Path, wal: WAL, objects: ObjectStore,
                      epoch: int) -> tuple[StreamEngine, TopicManager]:
    """Start an engine over `wal` and `objects` (metadata in `tmp`) and load its topics."""
    meta = EmbeddedMetadataStore(str(tmp / "meta.db"))
    engine = StreamEngine(wal, objects, meta, EngineConfig(), describe=describe)
    await engine.start(epoch)
    topics = TopicManager(engine, meta)
    await topics.load()
    return engine, topics
