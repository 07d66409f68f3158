"""The broker process: wires config -> metadata, object store, WAL, engine, topics, API,
listener; and shuts them down in reverse order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from urllib.parse import parse_qsl, urlparse, urlsplit, urlunparse

from tidelog.api.authorizer import Authorizer, parse_super_users
from tidelog.api.base import BrokerConfig, BrokerInfo, ClusterView, Context, PeerRequest
from tidelog.api.dispatch import Dispatcher
from tidelog.api.txn_markers import send_markers
from tidelog.config import Config, ConfigError, Listener, parse_listeners
from tidelog.controller.balancer import Balancer
from tidelog.controller.election import ControllerElection
from tidelog.controller.membership import BrokerRecord, Membership
from tidelog.controller.placement import Candidate, place
from tidelog.controller.takeover import Takeovers, claim_own_wal
from tidelog.coordinator.coordinator import CoordinatorConfig, GroupCoordinator
from tidelog.coordinator.transactions import TransactionCoordinator, TxnConfig
from tidelog.metadata.base import MetadataStore
from tidelog.metadata.uri import open_metadata
from tidelog.metrics import (
    BrokerCollector,
    MetricsEndpoint,
    RequestMetrics,
    parse_metrics_listener,
)
from tidelog.net.peer import PeerClient
from tidelog.net.server import KafkaListener
from tidelog.objectstore.counting import CountingObjectStore, ObjectStoreStats
from tidelog.objectstore.latency import open_with_emulation
from tidelog.objectstore.uri import open_object_store
from tidelog.partition.log_manager import LogManager, LogManagerConfig
from tidelog.partition.partition import describe
from tidelog.partition.topics import TopicManager
from tidelog.stream.engine import EngineConfig, StreamEngine
from tidelog.stream.object_compaction import CompactionConfig
from tidelog.stream.wal.base import WAL
from tidelog.stream.wal.uri import OBJECT_WAL_SCHEMES, open_wal, parse_bool, ring_file_path
from tidelog.zone.connection import ZoneRules
from tidelog.zone.produce_proxy import ProduceProxy
from tidelog.zone.remote_fetch import RemoteFetch

log = logging.getLogger(__name__)


def wal_file_uri(uri: str, node_id: int) -> str:
    """This broker's WAL from `wal.uri`, query options kept: a directory on the (shared)
    volume holds one file per broker (`broker-<id>.wal`), an object-store URI one prefix
    per broker (`.../broker-<id>`). A `file:` URI ending in `.wal`, or naming an existing
    file or block device (`file:///dev/nvme1n1`), is used as it is."""
    parsed = urlparse(uri)
    if parsed.scheme in OBJECT_WAL_SCHEMES:
        return urlunparse(parsed._replace(path=f"{parsed.path.rstrip('/')}/broker-{node_id}"))
    if parsed.scheme not in ("file", ""):
        return uri
    path = (parsed.netloc + parsed.path) if parsed.scheme == "file" else uri
    if path.endswith(".wal") or (os.path.exists(path) and not os.path.isdir(path)):
        return uri
    os.makedirs(path, exist_ok=True)
    query = f"?{parsed.query}" if parsed.scheme == "file" and parsed.query else ""
    return "file://" + os.path.join(path, f"broker-{node_id}.wal") + query


def is_cluster(metadata_uri: str) -> bool:
    """Cluster mode is metadata several brokers share (PostgreSQL); embedded is one node."""
    return metadata_uri.split("://", 1)[0] in ("postgresql", "postgres")


def _advertised(binds: list[Listener], value: str) -> list[Listener]:
    """The advertised address of each bound listener, matched by name as Kafka does (by
    position when no name matches: `advertised.listeners` written for one listener under
    another name); a listener not advertised is reached where it is bound."""
    if not value:
        return list(binds)
    adverts = parse_listeners(value)
    by_name = {a.name: a for a in adverts}
    if not set(by_name) & {b.name for b in binds}:
        by_name = {b.name: Listener(a.host, a.port, b.name)
                   for b, a in zip(binds, adverts, strict=False)}
    return [by_name.get(b.name, b) for b in binds]


def _endpoints(adverts: list[Listener]) -> dict[str, tuple[str, int]]:
    return {a.name: (a.host, a.port) for a in adverts}


def _without_query(uri: str) -> str:
    """For logs: a URI's query may hold credentials."""
    return uri.split("?", 1)[0]


class Broker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.listener: KafkaListener | None = None
        """The first of `listeners` (the one other brokers use)."""
        self.listeners: list[KafkaListener] = []
        self.engine: StreamEngine | None = None
        self.meta: MetadataStore | None = None
        self.topics: TopicManager | None = None
        self.dispatcher: Dispatcher | None = None
        self.coordinator: GroupCoordinator | None = None
        self.transactions: TransactionCoordinator | None = None
        self.log_manager: LogManager | None = None
        self.membership: Membership | None = None
        self.election: ControllerElection | None = None
        self.takeovers: Takeovers | None = None
        self.remote_fetch: RemoteFetch | None = None
        self.produce_proxy: ProduceProxy | None = None
        self.balancer: Balancer | None = None
        self.peers: PeerClient | None = None
        self.authorizer: Authorizer | None = None
        self.node_id = 0
        # every object store the broker opens is wrapped to count into this (the WAL's too)
        self.store_stats = ObjectStoreStats()
        self.request_metrics: RequestMetrics | None = None
        self.metrics: MetricsEndpoint | None = None

    @property
    def metrics_port(self) -> int:
        """The bound metrics port; 0 when `metrics.enabled` is false."""
        return self.metrics.port if self.metrics is not None else 0

    async def start(self) -> None:
        c = self.config
        self.node_id = node_id = c.get_int("node.id")
        metrics_at = (parse_metrics_listener(c.get_str("metrics.listener"))
                      if c.get_bool("metrics.enabled") else None)
        self.meta = open_metadata(c.get_str("metadata.uri"))
        cluster = is_cluster(c.get_str("metadata.uri"))
        binds = parse_listeners(c.get_str("listeners"))
        adverts = _advertised(binds, c.get_str("advertised.listeners"))
        advertised = adverts[0]
        zones = ZoneRules.parse(c.get_str("listener.zones"), c.get_str("zone.cidr.blocks"))
        if unknown := set(zones.listener_zones) - {b.name for b in binds}:
            raise ConfigError(f"listener.zones names no listener: {sorted(unknown)}")
        store = CountingObjectStore(
            open_with_emulation(c.get_str("objectstore.uri"), open_object_store),
            self.store_stats)
        own_wal = wal_file_uri(c.get_str("wal.uri"), node_id)

        def wal_at(uri: str) -> WAL:
            """A WAL with this broker's options: its own, or one it takes over (recorded
            without a query: the options and credentials are this broker's)."""
            query = c.get_str("wal.uri").partition("?")[2]
            return open_wal(uri if "?" in uri or not query else f"{uri}?{query}",
                            capacity=c.get_int("wal.capacity"),
                            append_timeout=c.get_int("append.timeout.ms") / 1000,
                            wrap_store=lambda s: CountingObjectStore(s, self.store_stats))

        wal = wal_at(own_wal)
        self.engine = StreamEngine(wal, store, self.meta, EngineConfig(
            upload_bytes=c.get_int("upload.bytes"),
            upload_interval=c.get_int("upload.interval.ms") / 1000,
            split_bytes=c.get_int("stream.object.split.bytes"),
            cache_max_bytes=c.get_int("log.cache.bytes"),
            block_cache_bytes=c.get_int("block.cache.bytes"),
            append_timeout=c.get_int("append.timeout.ms") / 1000,
            gc_grace=c.get_int("log.segment.delete.delay.ms") / 1000,
            gc_interval=c.get_int("upload.interval.ms") / 1000,
            orphan_audit_interval=c.get_int("object.orphan.audit.interval.ms") / 1000,
            compaction_interval=c.get_int("object.compaction.interval.ms") / 1000,
            compaction=CompactionConfig(
                small_bytes=c.get_int("object.compaction.small.bytes"),
                min_objects=c.get_int("object.compaction.min.objects"),
                max_input_bytes=c.get_int("object.compaction.max.input.bytes")),
        ), describe=describe, node_id=node_id, cluster=cluster)
        engine = self.engine
        if cluster:  # claim the node id before touching its WAL
            self.membership = Membership(
                self.meta, BrokerRecord(node_id, advertised.host, advertised.port,
                                        c.get_str("broker.rack") or None,
                                        _without_query(c.get_str("wal.uri")), 0,
                                        _endpoints(adverts)),
                ttl=c.get_int("broker.session.timeout.ms") / 1000,
                interval=c.get_int("broker.heartbeat.interval.ms") / 1000,
                on_deadline=lambda d: setattr(engine, "ack_deadline", d),
                on_lost=lambda why: engine.fail(f"lease lost: {why}"))
            await self.membership.register()
        await self.engine.start(await claim_own_wal(
            self.meta, node_id, _without_query(own_wal), c.get_str("broker.rack") or None))
        self.topics = TopicManager(self.engine, self.meta,
                                   c.get_int("producer.id.expiration.ms"),
                                   broker_configs=c.values,
                                   placer=self._place if cluster else None)
        await self.topics.load()
        if self.membership is not None:
            membership = self.membership
            topics = self.topics

            def controller_changed(active: bool) -> None:
                engine.cluster_jobs = active
                if active:
                    topics.place_unplaced()  # what was created while there was none
                    if self.takeovers is not None:
                        self.takeovers.poke()  # WALs left without a taker meanwhile

            self.election = election = ControllerElection(
                self.meta, node_id, lambda: membership.lease, on_change=controller_changed)
            topics.is_controller = lambda: election.active
            self.takeovers = Takeovers(self.meta, engine, membership, wal_at,
                                       lambda: election.active,
                                       restart_grace=membership.ttl)
            await self.takeovers.start()
            await self.election.start()
            if c.get_bool("auto.leader.rebalance.enable"):
                self.balancer = Balancer(
                    topics, membership, lambda: election.active,
                    interval=c.get_int("leader.imbalance.check.interval.seconds"))
                self.balancer.start()
        self.log_manager = LogManager(self.topics, LogManagerConfig(
            retention_check_interval=c.get_int("log.retention.check.interval.ms") / 1000,
            cleaner_backoff=c.get_int("log.cleaner.backoff.ms") / 1000,
            cleaner_enabled=c.get_bool("log.cleaner.enable"),
        ))
        await self.log_manager.start()
        self.coordinator = GroupCoordinator(self.topics, CoordinatorConfig(
            offsets_retention_ms=c.get_int("offsets.retention.minutes") * 60_000,
            min_session_timeout_ms=c.get_int("group.min.session.timeout.ms"),
            max_session_timeout_ms=c.get_int("group.max.session.timeout.ms"),
            initial_rebalance_delay_ms=c.get_int("group.initial.rebalance.delay.ms"),
            consumer_session_timeout_ms=c.get_int("group.consumer.session.timeout.ms"),
            consumer_heartbeat_interval_ms=c.get_int("group.consumer.heartbeat.interval.ms"),
            consumer_assignor=c.get_str("group.consumer.assignors").split(",")[0].strip(),
            partitions=c.get_int("offsets.topic.num.partitions"),
        ))
        self.transactions = TransactionCoordinator(self.topics, self.coordinator.offsets, TxnConfig(
            max_timeout_ms=c.get_int("transaction.max.timeout.ms"),
            id_expiration_ms=c.get_int("transactional.id.expiration.ms"),
            partitions=c.get_int("transaction.state.log.num.partitions"),
        ))
        self.topics.open_listeners += [self.coordinator.opened, self.transactions.opened]
        self.topics.close_listeners += [self.coordinator.closed, self.transactions.closed]
        if self.membership is not None:
            membership = self.membership

            def address(n: int) -> tuple[str, int] | None:
                r = membership.live.get(n)
                return None if r is None else (r.host, r.port)

            self.peers = peers = PeerClient(node_id, address)

            async def remote(node: int, pid: int, epoch: int, commit: bool, cepoch: int,
                             parts: list[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
                return await send_markers(peers.request, node, pid, epoch, commit, cepoch,
                                          parts)

            self.transactions.remote_markers = remote
            remote_fetch = self._remote_fetch(peers, own_wal)
            if remote_fetch is not None:
                self.produce_proxy = ProduceProxy(engine, peers.call, node_id)
            peer_request: PeerRequest | None = peers.request
        else:
            remote_fetch, peer_request = None, None
        await self.coordinator.start(create=not cluster)
        await self.transactions.start(create=not cluster)
        broker_cfg = BrokerConfig(
            cluster_id=c.get_str("cluster.id"),
            auto_create_topics=c.get_bool("auto.create.topics.enable"),
            num_partitions=c.get_int("num.partitions"),
        )
        info = BrokerInfo(node_id, advertised.host, advertised.port,
                          c.get_str("broker.rack") or None, _endpoints(adverts))
        authorizer = Authorizer(self.meta,
                                allow_if_no_acl=c.get_bool("allow.everyone.if.no.acl.found"),
                                super_users=parse_super_users(c.get_str("super.users")))
        await authorizer.load()
        self.authorizer = authorizer
        ctx = Context(info, self.topics, self.coordinator, broker_cfg,
                      transactions=self.transactions, authorizer=authorizer,
                      cluster=self._cluster_view(), remote_fetch=remote_fetch,
                      produce_proxy=self.produce_proxy, peer=peer_request)
        self.dispatcher = Dispatcher(ctx)
        self.request_metrics = RequestMetrics() if metrics_at is not None else None
        self.listeners = [KafkaListener(self.dispatcher, bind.host, bind.port,
                                        c.get_int("socket.request.max.bytes"),
                                        self.request_metrics.observe if self.request_metrics
                                        else None, bind.name, zones) for bind in binds]
        self.listener = self.listeners[0]
        for listener in self.listeners:
            await listener.start()
        if any(a.port == 0 for a in adverts):  # bound to free ports: advertise the real ones
            adverts = [Listener(a.host, listener.port if a.port == 0 else a.port, a.name)
                       for a, listener in zip(adverts, self.listeners, strict=True)]
            info.port, info.endpoints = adverts[0].port, _endpoints(adverts)
            if self.membership is not None:
                await self.membership.update(port=info.port, endpoints=info.endpoints)
        if metrics_at is not None:
            self.metrics = MetricsEndpoint.start(BrokerCollector(self), *metrics_at)
            log.info("metrics on %s", self.metrics.url)
        log.info("tidelog broker %d ready on %s:%d (wal %s, objects %s)", node_id,
                 info.host, info.port, _without_query(c.get_str("wal.uri")),
                 _without_query(c.get_str("objectstore.uri")))

    async def _place(self, count: int) -> list[int]:
        assert self.membership is not None and self.topics is not None
        live = [Candidate(r.node_id, r.rack) for r in self.membership.live.values()]
        return place(count, sorted(live, key=lambda b: b.node_id), self.topics.owned_by())

    def _drain_targets(self, count: int) -> list[int]:
        """Owners among the other live brokers for `count` partitions leaving this one."""
        assert self.membership is not None and self.topics is not None
        others = [Candidate(r.node_id, r.rack) for r in self.membership.live.values()
                  if r.node_id != self.node_id]
        if not others:
            return []
        return place(count, sorted(others, key=lambda b: b.node_id), self.topics.owned_by())

    def _remote_fetch(self, peers: PeerClient, own_wal: str) -> RemoteFetch | None:
        """Reads of the other brokers' WAL files (zoned fetch and produce through a
        same-zone broker, docs/design/0003-zones.md), when this broker's WAL is a file
        the others can read."""
        assert self.engine is not None and self.takeovers is not None
        own_path = ring_file_path(own_wal)
        if own_path is None:
            return None
        takeovers = self.takeovers

        def wal_path(node: int) -> str | None:
            rec = takeovers.wals.get(node)
            return None if rec is None else ring_file_path(rec.uri)

        direct = parse_bool(dict(parse_qsl(urlsplit(own_wal).query)).get("direct", "false"))
        self.remote_fetch = RemoteFetch(self.engine, peers.call, wal_path, own_path,
                                        direct=direct)
        return self.remote_fetch

    def _cluster_view(self) -> ClusterView | None:
        membership, election = self.membership, self.election
        if membership is None or election is None:
            return None
        return ClusterView(
            brokers=lambda: [BrokerInfo(r.node_id, r.host, r.port, r.rack, r.endpoints)
                             for r in membership.live.values()],
            controller_id=lambda: election.controller_id)

    async def stop(self) -> None:
        if self.balancer is not None:
            await self.balancer.stop()
        if (self.membership is not None and self.topics is not None
                and self.engine is not None and self.engine.failed is None):
            try:  # controlled shutdown: the others serve our partitions with no takeover
                await self.topics.drain(self._drain_targets)
            except Exception as exc:  # what is left is taken over after the lease
                log.warning("handing partitions over at shutdown failed: %r", exc)
        for listener in self.listeners:
            await listener.stop()
        if self.log_manager is not None:
            await self.log_manager.stop()
        if self.transactions is not None:
            await self.transactions.stop()
        if self.coordinator is not None:
            await self.coordinator.stop()
        if self.topics is not None:
            try:  # a restart then needs no scan of the log to rebuild producer state
                await self.topics.snapshot_producers()
            except Exception as exc:  # the log still has it all: only the restart is slower
                log.warning("producer state snapshot failed: %r", exc)
        if self.peers is not None:
            await self.peers.close()
        if self.remote_fetch is not None:
            self.remote_fetch.close()
        if self.authorizer is not None:
            await self.authorizer.close()
        if self.takeovers is not None:
            await self.takeovers.stop()
        if self.election is not None:
            await self.election.stop()
        if self.topics is not None:
            await self.topics.stop()
        if self.engine is not None:
            await self.engine.close(flush=True)
        if self.membership is not None:  # after the final upload: it needed the lease
            await self.membership.close()
        if self.meta is not None:
            await self.meta.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None


async def serve(config: Config, ready_file: str | None = None,
                metrics_ready_file: str | None = None) -> int:
    """Run until SIGINT/SIGTERM (exit code 0) or a storage failure (exit code 1, so a
    supervisor restarts the broker, which then recovers from the WAL).

    Once serving, the bound metrics port (0: metrics off) goes to `metrics_ready_file`,
    then the Kafka port to `ready_file`."""
    broker = Broker(config)
    try:
        await broker.start()
    except BaseException:
        await broker.stop()  # release the WAL and metadata before reporting
        raise
    if metrics_ready_file:
        _write_ready(metrics_ready_file, broker.metrics_port)
    if ready_file and broker.listener is not None:
        _write_ready(ready_file, broker.listener.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    failed = asyncio.ensure_future(_watch_engine(broker))
    await asyncio.wait([asyncio.ensure_future(stop.wait()), failed],
                       return_when=asyncio.FIRST_COMPLETED)
    failure = broker.engine.failed if broker.engine is not None else None
    log.info("shutting down%s", f" after a storage failure: {failure}" if failure else "")
    await broker.stop()
    return 1 if failure else 0


def _write_ready(path: str, port: int) -> None:
    """Tell a supervisor (or a test) the bound port, atomically; once, at start."""
    with open(path + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(path + ".tmp", path)


async def _watch_engine(broker: Broker) -> None:
    """A broker whose storage failed must stop: a restart recovers from the WAL."""
    while broker.engine is not None and broker.engine.failed is None:
        await asyncio.sleep(0.5)
