"""A real broker process for integration tests: `tidelog server` on a free port.

The metrics endpoint binds a free port too (`metrics_port`, 0 when a test turns metrics
off), so brokers started side by side never collide on the default 9464.

`wal_settings(kind, ...)` picks the WAL a test runs on (`WAL_KINDS`): a plain file, a file
with O_DIRECT, or an S3 WAL on the session's moto server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

WAL_KINDS = ("file", "direct", "s3")


def wal_settings(kind: str, request: pytest.FixtureRequest, directory: Path) -> dict[str, str]:
    """Broker settings for WAL `kind` ("file": the default), its files under `directory`.

    "direct" is skipped where the file system refuses O_DIRECT (the WAL would fall back to
    buffered I/O and the run would prove nothing); "s3" starts the moto fixture and gives
    the broker a prefix of its own, with a short group-commit interval to keep runs quick.
    """
    if kind == "file":
        return {}
    if kind == "direct":
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / "odirect-probe"
        try:
            os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644))
        except (OSError, AttributeError):
            pytest.skip(f"the file system of {directory} refuses O_DIRECT")
        finally:
            probe.unlink(missing_ok=True)
        return {"wal.uri": f"file://{directory}/wal-direct?direct=true"}
    if kind == "s3":
        s3 = request.getfixturevalue("moto_s3")
        query = urlencode({"batch.interval.ms": "20", **s3["options"]})
        return {"wal.uri": f"s3://{s3['bucket']}/wal-{uuid.uuid4().hex}?{query}"}
    raise ValueError(f"unknown WAL kind {kind!r}")


WAL_OPENED = {"file": ".wal: opened", "direct": ", O_DIRECT", "s3": "opened epoch 1 at object"}
"""What the broker logs when each WAL kind opens: proof a test ran on the kind it names."""


class BrokerProcess:
    def __init__(self, data_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.settings = settings or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = data_dir / "broker.log"
        self.port_fixed: int | None = None
        self.metrics_port = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "ready"
        metrics_ready = self.data_dir / "metrics-ready"
        ready.unlink(missing_ok=True)
        metrics_ready.unlink(missing_ok=True)
        port = self.port_fixed if self.port_fixed is not None else 0
        settings = {
            "listeners": f"PLAINTEXT://127.0.0.1:{port}",
            # restarts keep the metrics port scrapers know, like the Kafka port
            "metrics.listener": f"http://127.0.0.1:{self.metrics_port}",
            "wal.uri": f"file://{self.data_dir}/wal",
            "objectstore.uri": f"file://{self.data_dir}/objects",
            "metadata.uri": f"embedded://{self.data_dir}",
            # small: a test run starts ~100 brokers, each WAL file is preallocated
            "wal.capacity": str(64 << 20),
            **self.settings,
        }
        args = [sys.executable, "-m", "tidelog.cli", "server", "--ready-file", str(ready),
                "--metrics-ready-file", str(metrics_ready)]
        for k, v in settings.items():
            args += ["--set", f"{k}={v}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
        logf = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited early:\n{self.log(5000)}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"broker not ready in {timeout}s:\n{self.log(5000)}")
            time.sleep(0.05)
        self.port = int(ready.read_text())
        self.metrics_port = int(metrics_ready.read_text())  # written before `ready`
        self.port_fixed = self.port  # restarts keep the address clients know
        return self

    def log(self, tail: int | None = None) -> str:
        """The broker's log so far (its last `tail` characters, for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()
