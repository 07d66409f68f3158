"""The HTTP endpoint Prometheus scrapes (`metrics.listener`, path `/metrics`), served by
prometheus-client in its own threads so a busy event loop never delays a scrape."""

from __future__ import annotations

from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from tidelog.config import ConfigError


def parse_metrics_listener(value: str) -> tuple[str, int]:
    """`http://HOST:PORT` -> (host, port); port 0 binds a free port."""
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or port is None or parts.path not in ("", "/", "/metrics"):
        raise ConfigError(f"metrics.listener must be http://HOST:PORT, got {value!r}")
    return parts.hostname or "0.0.0.0", port


class MetricsEndpoint:
    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        self.host = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @classmethod
    def start(cls, collector: Collector, host: str, port: int) -> MetricsEndpoint:
        registry = CollectorRegistry()
        registry.register(collector)
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, memory, open fds
        server, _thread = start_http_server(port, host, registry=registry)
        return cls(server)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Blocks until the serving thread has stopped (up to half a second)."""
        self._server.shutdown()
        self._server.server_close()
