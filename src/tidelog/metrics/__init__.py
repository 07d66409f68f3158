"""Prometheus metrics: Kafka's names where Kafka has the metric (`kafka.py`), Tidelog's
own `tidelog_*` for storage and cost (`storage.py`), per-request timings fed by the
listener (`requests.py`), all collected at scrape time (`collector.py`) and served by
`endpoint.py`. Every metric is documented in docs/metrics.md.

This package is wiring, like `server.py`: it reads every layer and no layer imports it.
"""

from tidelog.metrics.collector import BrokerCollector
from tidelog.metrics.endpoint import MetricsEndpoint, parse_metrics_listener
from tidelog.metrics.requests import RequestMetrics

__all__ = ["BrokerCollector", "MetricsEndpoint", "RequestMetrics", "parse_metrics_listener"]
