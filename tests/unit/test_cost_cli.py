"""`tidelog cost` end to end in-process: table, --json, --chart, --prices, errors."""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tidelog.cli import main

SEED_ARGS = ["cost", "--write-mbps", "1024", "--read-fanout", "1", "--retention-hours", "72",
             "--azs", "3", "--partitions", "256", "--message-bytes", "1024", "--latency-ms", "20"]


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(SEED_ARGS) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    assert rows["total"][-3:] == ["235,877", "11,119", "17,116"]
    assert rows["cross-AZ transfer"][-3:] == ["140,160", "137", "137"]
    assert rows["meets target"][-3:] == ["yes", "no", "yes"]
    assert "52 AKU (bound by write) -> 6 x m7g.4xlarge" in out
    assert "1536 MBps + 1536 MBps" in out
    assert "Recommended: diskless FSx WAL" in out and "2025.12-aws-us-east-1" in out


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SEED_ARGS, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [a["key"] for a in doc["architectures"]] == ["kafka", "s3_wal", "fsx_wal"]
    for a in doc["architectures"]:
        assert set(a["lines"]) == {"compute", "block_file_storage", "object_storage",
                                   "requests", "cross_az"}
        assert a["total"] == pytest.approx(sum(a["lines"].values()))
    fsx = doc["architectures"][2]
    assert fsx["sizing"]["aku"] == 52 and fsx["sizing"]["fsx"] == [1536, 1536]
    assert doc["recommended"] == "fsx_wal" and doc["workload"]["write_mibps"] == 1024
    assert doc["prices"]["version"] == "2025.12-aws-us-east-1"
    assert doc["price_sources"]["fsx_throughput_mbps_month"]["status"] == "derived"


def test_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "cost.png"
    assert main([*SEED_ARGS, "--chart", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_chart_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*SEED_ARGS, "--chart", str(tmp_path / "x.png")]) == 2
    assert "pip install 'tidelog[chart]'" in capsys.readouterr().err


def test_price_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[prices]\nversion = "double-ec2"\ninstance_hour = 1.3056\n')
    assert main([*SEED_ARGS, "--json", "--prices", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    kafka = doc["architectures"][0]
    assert kafka["lines"]["compute"] == pytest.approx(2 * 25_733.376)
    assert doc["prices"]["version"] == "double-ec2"


def test_show_prices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--show-prices"]) == 0
    out = capsys.readouterr().out
    assert "s3_put_per_1000 = 0.005  [list]" in out
    assert "fsx_throughput_mbps_month = 2.4  [derived]" in out
    assert "aku_per_instance = 9" in out


def test_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--write-mbps", "0"]) == 2
    assert "write rate must be positive" in capsys.readouterr().err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["cost", "--from-metrics", f"127.0.0.1:{port}", "--interval", "1"]) == 1
    assert "cannot scrape" in capsys.readouterr().err


class _Pages(BaseHTTPRequestHandler):
    pages: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.pages.pop(0).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(pages: list[str]) -> tuple[ThreadingHTTPServer, str]:
    _Pages.pages = list(pages)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def test_from_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_cost_metrics_source import exposition

    server, addr = serve([exposition(0, 0, 0), exposition(8 << 20, 10, 0)])
    try:
        assert main(["cost", "--from-metrics", addr, "--interval", "0.1", "--json"]) == 0
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert "scraped 1 endpoint(s)" in captured.err
    doc = json.loads(captured.out)
    assert [a["key"] for a in doc["architectures"]] == ["measured", "kafka", "s3_wal", "fsx_wal"]
    assert doc["run"]["bytes_in"] == 12 << 20 and doc["run"]["object_requests"]["PUT"] == 10
    assert doc["architectures"][0]["lines"]["requests"] > 0
    assert doc["workload"]["read_fanout"] == 2  # 3x the bytes of topic a over a + b


def test_from_metrics_of_an_idle_broker(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_cost_metrics_source import exposition

    server, addr = serve([exposition(100, 1, 0), exposition(100, 1, 0)])
    try:
        assert main(["cost", "--from-metrics", addr, "--interval", "0.1"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "this run (FSx WAL)" in out and "Kafka" not in out  # nothing to model
    assert "Recommended" not in out
