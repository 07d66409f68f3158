"""The shipped Grafana dashboard only queries metrics a live broker exports,
docs/metrics.md documents exactly the metrics it exports, and the Prometheus example
scrapes the default endpoint."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.broker import BrokerProcess
from tidelog.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\b(?:kafka|tidelog|process)_[a-zA-Z0-9_]*")
DOCUMENTED = re.compile(r"`((?:kafka|tidelog|process)_[a-z0-9_]+)`")


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text: panel targets and template variable queries."""
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def exported(url: str) -> tuple[set[str], set[str]]:
    """(sample names, family names as documented: counters with `_total`)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    families = list(text_string_to_metric_families(text))
    return ({s.name for f in families for s in f.samples},
            {f.name + ("_total" if f.type == "counter" else "") for f in families})


def exercise(broker: BrokerProcess) -> None:
    """Traffic that makes every labelled series appear: produce, a group that fetches and
    commits, and an upload."""
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(200):
        p.produce("dash", f"v{i}".encode())
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "dash-group",
                  "auto.offset.reset": "earliest", "client.rack": "zone-b"})
    c.subscribe(["dash"])
    got = 0
    deadline = time.monotonic() + 60
    while got < 200 and time.monotonic() < deadline:
        got += len(c.consume(200, 1.0))
    c.commit(asynchronous=False)
    c.close()
    assert got == 200


def test_dashboard_queries_and_docs_match_exported_metrics(
        broker_factory: type[BrokerProcess]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "tidelog.json").read_text())
    texts = queries(dashboard)
    assert len(texts) > 30
    broker = broker_factory({"upload.interval.ms": "200",
                             "group.initial.rebalance.delay.ms": "0"}).start()
    exercise(broker)
    time.sleep(0.5)  # an upload round
    names, families = exported(broker.metrics_url)
    missing = {}
    for text in texts:
        used = set(METRIC.findall(text))
        assert used, f"a query with no metric the broker exports: {text}"
        if used - names:
            missing[text] = sorted(used - names)
    assert not missing, missing
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    doc = (ROOT / "docs" / "metrics.md").read_text()
    # the cluster section's families exist only in cluster mode: test_cluster.py checks them
    before, _, rest = doc.partition("\n## Cluster")
    _cluster, _, after = rest.partition("\n## ")
    documented = set(DOCUMENTED.findall(before + after))
    assert families - documented == set(), "exported but not in docs/metrics.md"
    assert documented - families == set(), "in docs/metrics.md but not exported"


def test_prometheus_example_scrapes_the_default_endpoint() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = urlsplit(DEFAULTS["metrics.listener"]).port
    assert [t.rsplit(":", 1)[1] for t in job["static_configs"][0]["targets"]] == [str(port)]
