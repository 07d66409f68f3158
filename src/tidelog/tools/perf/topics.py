"""Topic and group names as the original names them, and the admin calls around them.

Topics: `__automq_perf_<prefix>_<partitions:04d>_<index:07d>`; groups:
`sub-<topic>-<group index:03d>`. `--reset` deletes every topic with the common prefix, so a
run of either tool cleans up after both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from tidelog.tools.perf.config import TOPIC_COMMON_PREFIX

log = logging.getLogger("tidelog.perf")
MAX_PARTITIONS_PER_REQUEST = 10_000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int


def topic_name(prefix: str, partitions: int, index: int) -> str:
    return f"{TOPIC_COMMON_PREFIX}{prefix}_{partitions:04d}_{index:07d}"


def group_id(topic: str, group_index: int) -> str:
    return f"sub-{topic}-{group_index:03d}"


def _admin(settings: dict[str, str]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(dict(settings.items()))


def create_topics(settings: dict[str, str], prefix: str, count: int, partitions: int,
                  configs: dict[str, str], timeout: float = 120.0) -> list[Topic]:
    """Create the run's topics (existing ones are fine), in requests of at most 10,000
    partitions, and wait until each is known to the cluster."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewTopic

    admin = _admin(settings)
    names = [topic_name(prefix, partitions, i) for i in range(count)]
    per_request = max(1, MAX_PARTITIONS_PER_REQUEST // partitions)
    for start in range(0, len(names), per_request):
        chunk = [NewTopic(n, partitions, 1, config=dict(configs))
                 for n in names[start:start + per_request]]
        for name, future in admin.create_topics(chunk, request_timeout=timeout).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
    _wait_known(admin, set(names), timeout)
    return [Topic(n, partitions) for n in names]


def _wait_known(admin: Any, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        known = admin.list_topics(timeout=timeout).topics
        missing = [n for n in names if n not in known or known[n].error is not None]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics not ready after {timeout:.0f}s: {missing[:5]}")
        time.sleep(0.2)


def find_topics(settings: dict[str, str], prefix: str, timeout: float = 60.0) -> list[Topic]:
    """Existing topics named `__automq_perf_<prefix>*`, with their partition counts."""
    full = TOPIC_COMMON_PREFIX + prefix
    topics = _admin(settings).list_topics(timeout=timeout).topics
    return sorted((Topic(name, len(meta.partitions)) for name, meta in topics.items()
                   if name.startswith(full) and meta.error is None), key=lambda t: t.name)


def delete_perf_topics(settings: dict[str, str], timeout: float = 120.0) -> int:
    """Delete every topic of the tool's naming scheme; returns how many were deleted."""
    from confluent_kafka import KafkaException

    admin = _admin(settings)
    names = [n for n in admin.list_topics(timeout=timeout).topics
             if n.startswith(TOPIC_COMMON_PREFIX)]
    if not names:
        return 0
    deleted = 0
    for name, future in admin.delete_topics(names, request_timeout=timeout).items():
        try:
            future.result(timeout)
            deleted += 1
        except KafkaException as exc:
            log.warning("cannot delete %s: %s", name, exc)
    return deleted
