"""The metrics endpoint tells exactly what the broker did: counters checked against what
real clients sent and received and against the objects actually in the object store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.broker import BrokerProcess
from tidelog.stream.object_format import FOOTER, iter_records, parse_footer, parse_index
from tidelog.stream.wal.ring_format import RECORD_HEADER_SIZE

PARTITIONS = 2
N = 3000


def scrape(url: str) -> dict[str, float]:
    """Sample name with its labels in exposition order -> value."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def produce(bootstrap: str, topic: str) -> int:
    """N records of varied sizes; returns how many were acknowledged."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all"})
    acked = 0

    def cb(err: object, _msg: object) -> None:
        nonlocal acked
        assert err is None, err
        acked += 1

    for i in range(N):
        p.produce(topic, key=str(i).encode(), value=os.urandom(10 + i % 500),
                  partition=i % PARTITIONS, on_delivery=cb)
        p.poll(0)
    assert p.flush(30) == 0
    return acked


def consume(bootstrap: str, topic: str, rack: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "client.rack": rack,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    deadline = time.monotonic() + 60
    while got < N and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            assert m.error() is None, m.error()
            got += 1
    c.close()
    return got


def wait_uploaded(url: str) -> dict[str, float]:
    """Scrape once everything the WAL holds has been uploaded."""
    deadline = time.monotonic() + 30
    while True:
        m = scrape(url)
        if m["tidelog_log_cache_bytes"] == 0 and m["tidelog_wal_used_bytes"] == 0:
            return m
        assert time.monotonic() < deadline, "the log cache was never uploaded"
        time.sleep(0.2)


def stored_objects(directory: Path) -> tuple[int, int, int]:
    """(files, bytes, record-batch bytes inside them) in a file:// object store."""
    files = [f for f in directory.rglob("*") if f.is_file()]
    batch_bytes = 0
    for f in files:
        data = f.read_bytes()
        pos, size = parse_footer(data[-FOOTER.size:])
        for b in parse_index(data[pos:pos + size]):
            block = memoryview(data)[b.position:b.position + b.size]
            batch_bytes += sum(len(payload) for _, _, payload in iter_records(block))
    return len(files), sum(f.stat().st_size for f in files), batch_bytes


def test_counters_match_clients_and_object_store(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory({
        "num.partitions": str(PARTITIONS), "upload.bytes": str(128 << 10),
        "upload.interval.ms": "200", "object.compaction.interval.ms": "0",
        "broker.rack": "zone-a",
    }).start()
    assert produce(broker.bootstrap, "metered") == N
    assert consume(broker.bootstrap, "metered", rack="zone-b") == N
    m = wait_uploaded(broker.metrics_url)

    files, file_bytes, batch_bytes = stored_objects(broker.data_dir / "objects")
    topic = '{topic="metered"}'
    # what the client sent (the batches now in the objects) and received (all of it, once)
    assert m[f"kafka_server_brokertopicmetrics_messagesin_total{topic}"] == N
    assert m[f"kafka_server_brokertopicmetrics_bytesin_total{topic}"] == batch_bytes
    assert m[f"kafka_server_brokertopicmetrics_bytesout_total{topic}"] == batch_bytes
    # what the object store holds
    assert files >= 2 and m["tidelog_uploads_total"] >= 2
    assert m['tidelog_objectstore_requests_total{operation="PUT"}'] == files
    assert m['tidelog_objectstore_bytes_total{operation="PUT"}'] == file_bytes
    assert m["tidelog_objectstore_objects"] == files
    assert m["tidelog_objectstore_stored_bytes"] == file_bytes
    assert m["tidelog_stream_set_objects_written_total"] + m[
        "tidelog_stream_objects_written_total"] == files
    assert sum(v for k, v in m.items() if k.startswith("tidelog_objectstore_errors_total")) == 0
    # the WAL wrote each appended batch once, behind its record header
    records = m["tidelog_wal_records_total"]
    assert m["tidelog_wal_bytes_written_total"] == records * RECORD_HEADER_SIZE + batch_bytes
    assert m["tidelog_wal_group_bytes_sum"] == m["tidelog_wal_bytes_written_total"]
    assert m["tidelog_wal_append_seconds_count"] == records
    # zones: producer unknown (counted as the broker's zone), consumer told its rack
    zone = 'tidelog_zone_bytes_total{{destination_zone="{}",kind="{}",source_zone="{}",' \
           'traffic="client"}}'
    assert m[zone.format("zone-a", "data", "zone-a")] == batch_bytes
    assert m[zone.format("zone-b", "data", "zone-a")] == batch_bytes
    assert m[zone.format("zone-a", "control", "zone-a")] > 0
    assert m['tidelog_broker_info{node_id="0",zone="zone-a"}'] == 1
    # request metrics saw the produce requests, each one's phases adding up to its total
    produce_count = m['kafka_network_requestmetrics_totaltimems_count{request="Produce"}']
    assert produce_count >= records / PARTITIONS
    assert m['kafka_network_requestmetrics_totaltimems_bucket{le="+Inf",request="Produce"}'] \
        == produce_count
    phases = sum(m[f'kafka_network_requestmetrics_{p}_sum{{request="Produce"}}'] for p in (
        "requestqueuetimems", "localtimems", "responsequeuetimems", "responsesendtimems"))
    assert abs(phases - m['kafka_network_requestmetrics_totaltimems_sum{request="Produce"}']) \
        < 1e-6 * produce_count + 1e-3
    for p in range(PARTITIONS):
        part = f'{{partition="{p}",topic="metered"}}'
        assert m[f"kafka_log_log_logendoffset{part}"] == N // PARTITIONS
        assert m[f"kafka_log_log_logstartoffset{part}"] == 0
    # the partitions hold the batches, each framed by 20 bytes in its object's block
    size = sum(m[f'kafka_log_log_size{{partition="{p}",topic="metered"}}']
               for p in range(PARTITIONS))
    assert size == batch_bytes + 20 * records
    # + internal: __consumer_offsets and __transaction_state, 50 partitions each (Kafka)
    assert m["kafka_server_replicamanager_partitioncount"] == PARTITIONS + 100

    # a group that committed 100 and 200: its offsets and lag, as kafka_exporter names them
    behind = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "behind"})
    behind.commit(offsets=[TopicPartition("metered", p, 100 * (p + 1))
                           for p in range(PARTITIONS)], asynchronous=False)
    behind.close()
    m = scrape(broker.metrics_url)
    for p in range(PARTITIONS):
        group = f'{{consumergroup="behind",partition="{p}",topic="metered"}}'
        assert m[f"kafka_consumergroup_current_offset{group}"] == 100 * (p + 1)
        assert m[f"kafka_consumergroup_lag{group}"] == N // PARTITIONS - 100 * (p + 1)
    assert m['kafka_consumergroup_lag_sum{consumergroup="behind",topic="metered"}'] == N - 300


def test_endpoint_answers_under_load(broker_factory: type[BrokerProcess]) -> None:
    broker = broker_factory({"upload.interval.ms": "200"}).start()
    stop = threading.Event()
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    def load() -> None:
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1})
        value = os.urandom(1000)
        while not stop.is_set():
            try:
                p.produce("busy", value, on_delivery=delivered)
            except BufferError:
                p.poll(0.01)
            p.poll(0)
        p.flush(30)

    worker = threading.Thread(target=load)
    worker.start()
    def produced() -> float:
        return scrape(broker.metrics_url).get(
            'kafka_server_brokertopicmetrics_messagesin_total{topic="busy"}', 0.0)

    try:
        deadline = time.monotonic() + 30
        while produced() == 0:  # the producer is connecting, the topic being created
            assert time.monotonic() < deadline, "nothing was produced"
            time.sleep(0.1)
        seen = []
        for _ in range(10):
            time.sleep(0.3)
            seen.append(produced())
        status = subprocess.run(
            [sys.executable, "-m", "tidelog.cli", "status", "--metrics-url",
             broker.metrics_url, "--interval", "0.5"],
            capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        stop.set()
        worker.join()
    assert not errors
    assert seen == sorted(seen) and seen[-1] > seen[0] > 0  # live figures, every scrape
    assert "busy" in status and "storage OK" in status
    assert "Produce" in status and "PUT" in status


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (Linux: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # state LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_disabled_opens_no_port(broker_factory: type[BrokerProcess]) -> None:
    on = broker_factory().start()
    off = broker_factory({"metrics.enabled": "false"}).start()
    assert on.proc is not None and off.proc is not None
    assert listening_ports(on.proc.pid) == {on.port, on.metrics_port}
    assert off.metrics_port == 0
    assert listening_ports(off.proc.pid) == {off.port}
    p = Producer({"bootstrap.servers": off.bootstrap})
    p.produce("quiet", b"still works")
    assert p.flush(10) == 0
