"""The broker's one Prometheus collector: every family, read from live objects when
Prometheus scrapes (nothing is kept on the hot path but plain counters).

A scrape runs in the HTTP server's thread while the event loop mutates what it reads. Each
section copies the containers it walks; if one still changes under it ("dictionary changed
size during iteration") the section is read again, and a section that keeps failing is
left out of that scrape rather than failing the whole endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tidelog.metrics import kafka, storage
from tidelog.metrics.cluster import cluster

if TYPE_CHECKING:
    from tidelog.server import Broker

log = logging.getLogger(__name__)
ATTEMPTS = 3

Section = Callable[[], Iterable[Metric]]


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def sections(self) -> list[Section]:
        b = self.broker
        engine, topics, listener = b.engine, b.topics, b.listener
        dispatcher, coordinator = b.dispatcher, b.coordinator
        if engine is None or topics is None or listener is None or dispatcher is None:
            return []
        out: list[Section] = [
            lambda: kafka.topic_traffic(dispatcher.traffic),
            lambda: kafka.partitions(topics, engine),
            lambda: kafka.connections(b.listeners, dispatcher.traffic.zone),
            lambda: storage.wal(engine.wal, engine),
            lambda: storage.engine(engine),
            lambda: storage.object_store(b.store_stats),
            lambda: storage.zones(dispatcher.traffic, b.node_id),
        ]
        remote_fetch, produce_proxy = b.remote_fetch, b.produce_proxy
        if produce_proxy is not None:
            out.append(lambda: storage.zone_produce(produce_proxy.stats, engine))
        if remote_fetch is not None:
            out.append(lambda: storage.zone_fetch(remote_fetch.stats))
            out.append(lambda: storage.zone_switches(topics.flags))
        if coordinator is not None:
            out.append(lambda: kafka.consumer_groups(coordinator.offsets, topics))
        membership, election = b.membership, b.election
        if membership is not None:
            out.append(lambda: cluster(membership, election, engine, topics, b.takeovers,
                                       b.balancer))
        log_manager = b.log_manager
        if log_manager is not None:
            out.append(lambda: storage.log_cleanup(log_manager))
        if b.request_metrics is not None:
            out.append(b.request_metrics.families)
        return out

    def collect(self) -> Iterator[Metric]:
        for section in self.sections():
            yield from read_section(section)


def read_section(section: Section) -> list[Metric]:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return list(section())
        except RuntimeError as exc:  # a container changed size while being copied
            if attempt == ATTEMPTS:
                log.warning("metrics section left out of this scrape: %r", exc)
        except Exception:
            log.exception("metrics section failed")
            break
    return []
