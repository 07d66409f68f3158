"""Cluster-mode families: this broker's lease, whether it is the controller, the live
brokers it knows, the streams it owns, the ones fenced or taken away from it, and the
orphan streams the controller deleted."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from tidelog.controller.balancer import Balancer
from tidelog.controller.election import ControllerElection
from tidelog.controller.membership import Membership
from tidelog.controller.takeover import Takeovers
from tidelog.metrics.families import counter, gauge, labelled
from tidelog.partition.topics import TopicManager
from tidelog.stream.engine import StreamEngine


def cluster(membership: Membership, election: ControllerElection | None,
            engine: StreamEngine, topics: TopicManager,
            takeovers: Takeovers | None = None,
            balancer: Balancer | None = None) -> Iterator[Metric]:
    yield gauge("tidelog_broker_lease_remaining_seconds",
                "Seconds this broker may still acknowledge writes without a lease renewal "
                "(0: fenced)", membership.remaining())
    yield gauge("tidelog_controller", "1 on the active controller",
                1.0 if election is not None and election.active else 0.0)
    yield gauge("tidelog_cluster_live_brokers", "Brokers registered in the cluster",
                len(membership.live))
    yield gauge("tidelog_streams_owned", "Streams (partitions) open on this broker",
                len(engine.streams))
    yield counter("tidelog_stream_fenced", "Streams closed because an upload commit "
                  "found another owner or epoch", engine.fenced_streams)
    yield counter("tidelog_appends_fenced", "Appends made durable but not acknowledged: "
                  "this broker's lease may have expired, or the stream was fenced during "
                  "the append", engine.fenced_appends)
    yield counter("tidelog_streams_released", "Streams closed here because their record "
                  "named another owner or a newer epoch", engine.released_streams)
    yield counter("tidelog_orphan_streams_deleted", "Streams no topic named, deleted by "
                  "this broker as controller", topics.orphan_streams_deleted)
    yield counter("tidelog_partition_moves", "Partitions this broker handed to another "
                  "(AlterPartitionReassignments, tidelog partitions move)", topics.moves_done)
    yield gauge("tidelog_partition_move_last_seconds", "Duration of this broker's last "
                "partition move (move seen to handed over)", topics.last_move_seconds)
    if balancer is not None:
        yield labelled(CounterMetricFamily, "tidelog_balancer_moves",
                       "Moves this broker's balancer asked for as controller: to even out "
                       "partition counts, or produce bytes per second", ["reason"],
                       [(["partitions"], balancer.moves_asked - balancer.swaps_asked),
                        (["bytes"], balancer.swaps_asked)])
    if takeovers is None:
        return
    yield counter("tidelog_takeovers", "Dead brokers' WALs this broker replayed into objects "
                  "(failovers it carried out)", takeovers.takeovers)
    yield counter("tidelog_takeovers_abandoned", "Takeovers this broker gave up (another taker "
                  "or the owner moved the WAL on, or a failure)", takeovers.takeovers_abandoned)
    yield counter("tidelog_takeover_replayed_bytes", "Bytes of dead brokers' WALs this broker "
                  "wrote into objects", takeovers.replayed_bytes)
    yield gauge("tidelog_takeover_last_seconds", "Duration of this broker's last takeover "
                "(WAL open to done)", takeovers.last_takeover_seconds)
    yield counter("tidelog_takeovers_assigned", "WAL takeovers this broker assigned as "
                  "controller", takeovers.assigned)
