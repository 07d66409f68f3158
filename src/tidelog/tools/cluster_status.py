"""`tidelog cluster status`: the recorded brokers and whether their processes live, then the
cluster as the brokers report it, asked like any client would (DescribeCluster and Metadata
over the Kafka protocol, lease and controller figures from each metrics endpoint)."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from tidelog.tools.cluster_procs import alive
from tidelog.tools.cluster_state import BrokerEntry, ClusterState
from tidelog.tools.cost.metrics_source import TOPIC_ZONE_BYTES as TOPIC_ZONE_METRIC
from tidelog.tools.cost.metrics_source import cross_zone_by_topic as by_topic
from tidelog.tools.status import Scrape

LEASE_METRIC = "tidelog_broker_lease_remaining_seconds"
CONTROLLER_METRIC = "tidelog_controller"
TIMEOUT = 5.0


@dataclass(slots=True)
class ClusterView:
    """What one live broker says about the cluster."""

    via: str
    cluster_id: str
    controller_id: int
    brokers: list[tuple[int, str, int, str | None]]
    """(node id, host, port, rack)."""
    topics: int = 0
    leaders: Counter[int] = field(default_factory=Counter)
    """Partitions per leader node id (-1: none)."""


def table(rows: Iterable[Iterable[str]], indent: str = "") -> list[str]:
    """Left-aligned columns, two spaces apart; the first row is the header."""
    cells = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def masked(dsn: str) -> str:
    """A dsn without its password, for printing."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


def describe(bootstrap: str) -> ClusterView:
    """DescribeCluster and Metadata (all topics) from the broker at `bootstrap`."""
    from kio.schema.describe_cluster.v0 import request as dcl_req
    from kio.schema.metadata.v12 import request as md_req

    from tidelog.tools.wire import KafkaWireClient

    with KafkaWireClient(bootstrap, timeout=TIMEOUT) as client:
        dc = client.request(dcl_req.DescribeClusterRequest(
            include_cluster_authorized_operations=False))
        md = client.request(md_req.MetadataRequest(
            topics=None, allow_auto_topic_creation=False,
            include_topic_authorized_operations=False))
    view = ClusterView(via=bootstrap, cluster_id=dc.cluster_id,
                       controller_id=int(dc.controller_id),
                       brokers=sorted((int(b.broker_id), b.host, int(b.port), b.rack)
                                      for b in dc.brokers))
    view.topics = len(md.topics)
    view.leaders = Counter(int(p.leader_id) for t in md.topics for p in t.partitions)
    return view


def scrape(host: str, port: int) -> Scrape:
    """The broker's metrics, fetched directly (never through an HTTP proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{host}:{port}/metrics", timeout=TIMEOUT) as resp:
        return Scrape.parse(resp.read().decode())


def _lease(s: Scrape | None) -> str:
    if s is None or not s.series(LEASE_METRIC):
        return "-"
    return f"{s.value(LEASE_METRIC):.1f}s"


def _controller(s: Scrape | None) -> str:
    """The gauge is 1 on the active controller."""
    if s is None or not s.series(CONTROLLER_METRIC):
        return "-"
    return "yes" if s.value(CONTROLLER_METRIC) >= 1 else "no"


def _switches(s: Scrape | None) -> str:
    """`fetch`, `fetch+routing`, `off`: the dynamic zone switches (docs/design/0003);
    `-` where the broker has none (no shared WAL files, or no answer)."""
    if s is None:
        return "-"
    on = [labels.get("switch", "") for labels, v in s.series("tidelog_zone_switch") if v]
    if not s.series("tidelog_zone_switch"):
        return "-"
    return "+".join(sorted(on, key=["fetch", "routing"].index)) if on else "off"


def report(out: TextIO, state: ClusterState) -> bool:
    """Print the status; True when every recorded broker is alive."""
    live = {b.node_id: alive(b.pid, b.argv) for b in state.brokers}
    scrapes = {b.node_id: _try_scrape(b) if live[b.node_id] else None for b in state.brokers}
    print(f"cluster in {state.dir}: {state.state}; metadata {masked(state.dsn)}", file=out)
    if state.moto is not None:
        moto = "alive" if alive(state.moto.pid, state.moto.argv) else "not running"
        print(f"S3 (moto) at {state.moto.endpoint}: {moto}", file=out)
    rows = [["node", "zone", "address", "metrics", "pid", "alive", "lease", "controller",
             "zone switches"]]
    for b in state.brokers:
        s = scrapes[b.node_id]
        rows.append([str(b.node_id), b.zone, f"{b.host}:{b.port}",
                     str(b.metrics_port) if b.metrics_port else "-",
                     str(b.pid) if b.pid else "-", "yes" if live[b.node_id] else "no",
                     _lease(s), _controller(s), _switches(s)])
    for line in table(rows):
        print(line, file=out)
    print(file=out)
    _print_view(out, [b for b in state.brokers if live[b.node_id]])
    _print_zones(out, [sc for sc in scrapes.values() if sc is not None])
    print(f"bootstrap: {state.bootstrap}", file=out)
    return all(live.values())


def cross_zone_by_topic(scrapes: list[Scrape]) -> dict[str, tuple[float, float]]:
    """topic -> (client record bytes that crossed zones, all its client record bytes),
    summed over the brokers since they started."""
    return by_topic((labels.get("topic", ""), labels.get("source_zone", ""),
                     labels.get("destination_zone", ""), v)
                    for sc in scrapes for labels, v in sc.series(TOPIC_ZONE_METRIC))


def _print_zones(out: TextIO, scrapes: list[Scrape]) -> None:
    by_topic = cross_zone_by_topic(scrapes)
    if not by_topic:
        return
    print("client record bytes by topic since the brokers started (produce and fetch):",
          file=out)
    rows = [["topic", "bytes", "crossing zones", "share"]]
    for topic, (crossed, total) in sorted(by_topic.items(), key=lambda kv: -kv[1][1]):
        rows.append([topic, f"{total:,.0f}", f"{crossed:,.0f}",
                     f"{crossed / total:.1%}" if total else "-"])
    for line in table(rows, "  "):
        print(line, file=out)
    print(file=out)


def _try_scrape(b: BrokerEntry) -> Scrape | None:
    if not b.metrics_port:
        return None
    try:
        return scrape(b.host, b.metrics_port)
    except (OSError, ValueError):
        return None


def _print_view(out: TextIO, live: list[BrokerEntry]) -> None:
    errors = []
    for b in live:
        try:
            view = describe(f"{b.host}:{b.port}")
        except (OSError, ValueError) as exc:
            errors.append(f"{b.host}:{b.port}: {exc}")
            continue
        controller = view.controller_id if view.controller_id >= 0 else "none"
        print(f"as broker {b.node_id} ({view.via}) reports it: cluster {view.cluster_id}, "
              f"controller {controller}", file=out)
        for line in table([["broker", "address", "rack"]] + [
                [str(n), f"{h}:{p}", r or "-"] for n, h, p, r in view.brokers], "  "):
            print(line, file=out)
        leaders = ", ".join(f"{'none' if n < 0 else n}: {c}"
                            for n, c in sorted(view.leaders.items()))
        print(f"  {view.topics} topics, {sum(view.leaders.values())} partitions; "
              f"partitions per leader: {leaders or '-'}", file=out)
        print(file=out)
        return
    reason = "; ".join(errors) if errors else "no broker is alive"
    print(f"no broker answered ({reason})", file=out)
    print(file=out)
