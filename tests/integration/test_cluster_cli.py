"""`tidelog cluster`, run as a user runs it: one `up` of two brokers for the module, then
status, kill, start and down through the command line, checked from outside (PIDs, the
Kafka port, PostgreSQL's state). What the brokers report about each other is cluster mode's
business, tested elsewhere; here only the launcher is."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode

from tidelog.tools import cluster_procs, local_postgres
from tidelog.tools.wire import KafkaWireClient

pytestmark = pytest.mark.timeout(240)

FAST = [
    "--base-port", "0", "--metrics-base-port", "0",
    "--set", "wal.capacity=67108864",  # each WAL file is preallocated
    # a killed broker's registration outlives it by one session: keep `start` after `kill` quick
    "--set", "broker.session.timeout.ms=3000",
    "--set", "broker.heartbeat.interval.ms=1000",
]
CLI_TIMEOUT = 180.0  # above the tool's own timeouts, so it cleans up before we give up


def cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    return subprocess.run(
        [sys.executable, "-m", "tidelog.cli", "cluster", *args, "--dir", str(directory)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env)


def out(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def recorded(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "cluster.json").read_text())
    return data


def running(pid: int | None) -> bool:
    """Whether the PID names a live process (a zombie is dead)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def answers(host: str, port: int) -> bool:
    with KafkaWireClient(f"{host}:{port}", timeout=10.0) as client:
        resp = client.request(ApiVersionsRequest(client_software_name="test",
                                                 client_software_version="1"))
    return bool(resp.error_code == ErrorCode.none and resp.api_keys)


def stop_everything(directory: Path, seen: list[tuple[int, list[str]]]) -> None:
    """`down`, then SIGKILL to whatever of ours survived it (by PID, each checked against
    the argv it was started with), then PostgreSQL: nothing outlives the module."""
    with contextlib.suppress(Exception):
        cli(directory, "down")
    with contextlib.suppress(Exception):
        data = recorded(directory)
        seen += [(b["pid"], b["argv"]) for b in data["brokers"] if b["pid"]]
        if data["moto"] and data["moto"]["pid"]:
            seen.append((data["moto"]["pid"], data["moto"]["argv"]))
    for pid, argv in seen:
        if cluster_procs.signal_group(pid, argv, signal.SIGKILL):
            cluster_procs.wait_gone(pid, argv, 10.0)
    with contextlib.suppress(Exception):
        local_postgres.stop(directory / "postgres")


@dataclass
class Up:
    directory: Path
    output: str
    seen: list[tuple[int, list[str]]]
    """Every (pid, argv) a test saw recorded, for the final clean-up."""

    def state(self) -> dict[str, Any]:
        data = recorded(self.directory)
        self.seen += [(b["pid"], b["argv"]) for b in data["brokers"] if b["pid"]]
        return data


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    directory = tmp_path_factory.mktemp("cluster-cli") / "cluster"
    seen: list[tuple[int, list[str]]] = []
    try:
        done = cli(directory, "up", "--brokers", "2", "--zones", "a,b", *FAST)
        assert done.returncode == 0, out(done)
        up = Up(directory, done.stdout, seen)
        up.state()
        yield up
    finally:
        stop_everything(directory, seen)


def test_up_starts_every_broker(cluster: Up) -> None:
    state = cluster.state()
    assert state["state"] == "running"
    assert state["dsn"].startswith("postgresql://")
    assert state["wal_uri"] == f"file://{cluster.directory}/wal"
    assert state["objectstore_uri"] == f"file://{cluster.directory}/objects"
    brokers = state["brokers"]
    assert [(b["node_id"], b["zone"]) for b in brokers] == [(1, "a"), (2, "b")]
    for b in brokers:
        assert running(b["pid"]), b
        assert answers(b["host"], b["port"])
        assert f"broker.rack={b['zone']}" in b["argv"]
        assert Path(b["log"]).is_file()
    bootstrap = ",".join(f"{b['host']}:{b['port']}" for b in brokers)
    assert f"bootstrap: {bootstrap}" in cluster.output
    assert local_postgres.status(cluster.directory / "postgres") is not None


def test_status_lists_every_node(cluster: Up) -> None:
    done = cli(cluster.directory, "status")
    assert done.returncode == 0, out(done)
    lines = done.stdout.splitlines()
    for b in cluster.state()["brokers"]:
        row = [line.split() for line in lines if line.startswith(f"{b['node_id']} ")]
        assert row, out(done)
        assert row[0][1:3] == [b["zone"], f"{b['host']}:{b['port']}"], out(done)
        assert "yes" in row[0], out(done)
        assert row[0][-1] == "fetch", out(done)  # zone switches: the defaults


def test_up_again_leaves_the_cluster_alone(cluster: Up) -> None:
    before = [b["pid"] for b in cluster.state()["brokers"]]
    done = cli(cluster.directory, "up", "--brokers", "2")
    assert done.returncode == 0, out(done)
    assert "already up" in done.stdout
    assert [b["pid"] for b in cluster.state()["brokers"]] == before


def test_kill_then_start(cluster: Up) -> None:
    victim = cluster.state()["brokers"][1]
    done = cli(cluster.directory, "kill", "2")
    assert done.returncode == 0, out(done)
    assert not running(victim["pid"])
    done = cli(cluster.directory, "status")
    assert done.returncode == 1, out(done)
    done = cli(cluster.directory, "kill", "2")  # nothing left to kill
    assert done.returncode == 0 and "not running" in done.stdout, out(done)

    done = cli(cluster.directory, "start", "2")
    assert done.returncode == 0, out(done)
    again = cluster.state()["brokers"][1]
    assert again["pid"] != victim["pid"] and running(again["pid"])
    assert again["port"] == victim["port"]  # clients find it where it was
    assert answers(again["host"], again["port"])
    assert running(cluster.state()["brokers"][0]["pid"])  # the other one never noticed
    assert cli(cluster.directory, "status").returncode == 0


def test_unknown_node(cluster: Up) -> None:
    done = cli(cluster.directory, "kill", "7")
    assert done.returncode == 2 and "no broker 7" in done.stderr, out(done)


def test_add_broker_takes_a_share_and_remove_broker_hands_it_back(cluster: Up) -> None:
    """`add-broker` starts node 3 and the balancer moves partitions to it; `remove-broker 3`
    stops it after it handed them over (a controlled shutdown: no takeover needed), and
    every record is still read."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from tests.integration.cluster import wait_for

    def bootstrap() -> str:
        return ",".join(f"{b['host']}:{b['port']}" for b in cluster.state()["brokers"])

    def leaders() -> dict[int, int]:
        md = AdminClient({"bootstrap.servers": bootstrap()}).list_topics("scale", timeout=10)
        return {p.id: p.leader for p in md.topics["scale"].partitions.values()}

    admin = AdminClient({"bootstrap.servers": bootstrap()})
    admin.create_topics([NewTopic("scale", 6)])["scale"].result(30)
    wait_for(lambda: -1 not in leaders().values(), timeout=30, what="leaders")
    p = Producer({"bootstrap.servers": bootstrap(), "acks": "all"})
    for i in range(600):
        p.produce("scale", value=f"s-{i}".encode(), partition=i % 6)
    assert p.flush(30) == 0

    done = cli(cluster.directory, "add-broker")
    assert done.returncode == 0 and "broker 3 added" in done.stdout, out(done)
    assert [b["node_id"] for b in cluster.state()["brokers"]] == [1, 2, 3]
    wait_for(lambda: sorted(leaders().values()).count(3) == 2, timeout=30,
             what="broker 3 to get its share (2 of 6)")

    done = cli(cluster.directory, "remove-broker", "3")
    assert done.returncode == 0 and "broker 3 removed" in done.stdout, out(done)
    assert [b["node_id"] for b in cluster.state()["brokers"]] == [1, 2]
    wait_for(lambda: set(leaders().values()) == {1, 2}, timeout=30, what="its partitions")
    log3 = (cluster.directory / "logs" / "broker-3.log").read_text()
    assert "controlled shutdown: handing 2 partitions" in log3
    c = Consumer({"bootstrap.servers": bootstrap(), "group.id": "scale-check",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["scale"])
    got: set[bytes] = set()
    try:
        wait_for(lambda: bool(got.update(m.value() for m in c.consume(100, 0.5)
                                         if not m.error())) or len(got) == 600,
                 timeout=60, what="every record")
    finally:
        c.close()


def test_status_lists_record_bytes_by_topic(cluster: Up) -> None:
    """After a produce and a fetch, `status` lists the topic's client record bytes and the
    share that crossed zones (none here: the clients' zone is unknown, so each broker
    counts them in its own). After the add-broker test: its group creates __consumer_offsets,
    whose partitions the balancer would count in the add-broker test."""
    from confluent_kafka import Consumer, Producer

    brokers = cluster.state()["brokers"]
    bootstrap = ",".join(f"{b['host']}:{b['port']}" for b in brokers)
    p = Producer({"bootstrap.servers": bootstrap})
    for _ in range(100):
        p.produce("status-bytes", value=b"x" * 100, partition=0)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "status-bytes",
                  "auto.offset.reset": "earliest"})
    c.subscribe(["status-bytes"])
    got = 0
    try:
        for _ in range(120):
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
            if got == 100:
                break
    finally:
        c.close()
    assert got == 100
    done = cli(cluster.directory, "status")
    assert done.returncode == 0, out(done)
    assert "client record bytes by topic" in done.stdout, out(done)
    row = [line.split() for line in done.stdout.splitlines()
           if line.strip().startswith("status-bytes ")]
    assert row and row[0][2:] == ["0", "0.0%"], out(done)
    assert int(row[0][1].replace(",", "")) >= 2 * 100 * 100, out(done)


def test_down_stops_everything_and_keeps_data(cluster: Up) -> None:
    pids = [b["pid"] for b in cluster.state()["brokers"]]
    done = cli(cluster.directory, "down")
    assert done.returncode == 0, out(done)
    assert not any(running(pid) for pid in pids)
    assert local_postgres.status(cluster.directory / "postgres") is None
    state = recorded(cluster.directory)
    assert state["state"] == "stopped"
    assert all(b["pid"] is None for b in state["brokers"])
    assert (cluster.directory / "wal" / "broker-1.wal").exists()
    assert (cluster.directory / "logs" / "broker-2.log").exists()
    again = cli(cluster.directory, "down")
    assert again.returncode == 0 and "already stopped" in again.stdout, out(again)
    assert cli(cluster.directory, "status").returncode == 1


def test_no_cluster(tmp_path: Path) -> None:
    directory = tmp_path / "nothing"
    for args in (["status"], ["kill", "1"], ["start", "1"], ["down"]):
        done = cli(directory, *args)
        assert done.returncode == 2, out(done)
        assert len(done.stderr.splitlines()) == 1, out(done)
    assert not directory.exists()


def test_a_broker_that_cannot_start_fails_up(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    seen: list[tuple[int, list[str]]] = []
    try:
        done = cli(directory, "up", "--brokers", "1", *FAST, "--set", "wal.capacity=lots")
        assert done.returncode == 1, out(done)
        assert "broker 1 exited" in done.stderr and "last 20 lines" in done.stderr, out(done)
        assert not (directory / "cluster.json").exists()
        assert local_postgres.status(directory / "postgres") is None
    finally:
        stop_everything(directory, seen)


@pytest.mark.skipif(importlib.util.find_spec("moto") is None, reason="needs moto[server]")
def test_objects_on_s3(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    seen: list[tuple[int, list[str]]] = []
    try:
        done = cli(directory, "up", "--brokers", "1", "--objects", "s3", *FAST)
        assert done.returncode == 0, out(done)
        state = recorded(directory)
        moto = state["moto"]
        seen += [(b["pid"], b["argv"]) for b in state["brokers"]] + [(moto["pid"], moto["argv"])]
        assert state["objectstore_uri"].startswith("s3://tidelog/objects?")
        assert moto["endpoint"].startswith("http://127.0.0.1:")
        assert f"endpoint={moto['endpoint']}".replace(":", "%3A").replace("/", "%2F") in (
            state["objectstore_uri"])
        assert state["wal_uri"].startswith("file://")
        (b,) = state["brokers"]
        assert answers(b["host"], b["port"])
        status = cli(directory, "status")
        assert status.returncode == 0 and "(moto)" in status.stdout, out(status)

        done = cli(directory, "down")
        assert done.returncode == 0, out(done)
        assert not running(b["pid"]) and not running(moto["pid"])
        # moto keeps objects in memory: bringing the cluster back would lose them, so `up`
        # says so instead
        done = cli(directory, "up")
        assert done.returncode == 1 and "moto" in done.stderr, out(done)
        assert local_postgres.status(directory / "postgres") is None
    finally:
        stop_everything(directory, seen)


def test_s3_without_moto_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from tidelog.tools import cluster

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "moto" else real(name, *a))
    with pytest.raises(cluster.ClusterError, match=r"pip install 'moto\[server\]'"):
        cluster._start_moto(tmp_path, 0)
