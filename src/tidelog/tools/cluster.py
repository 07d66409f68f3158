"""`tidelog cluster up|status|kill|start|down`: a local multi-broker cluster in one directory,
as production runs it (brokers sharing one PostgreSQL, one WAL volume and one object store),
for trying cluster mode and for chaos by hand.

Everything lives in `--dir` (default `./cluster`): PostgreSQL's data, the WAL directory, the
objects, each broker's data dir, the logs, and `cluster.json`, the record the other commands
work from. Processes are found by their recorded PID only, never by name. `down` keeps all
data, so a later `up` brings the same cluster back on the same ports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from tidelog.tools import cluster_procs as procs
from tidelog.tools import cluster_state as record
from tidelog.tools import local_postgres
from tidelog.tools.cluster_state import (
    RUNNING,
    STOPPED,
    BrokerEntry,
    ClusterState,
    ClusterStateError,
    MotoEntry,
    Spec,
)
from tidelog.tools.cluster_status import report, table

HOST = procs.HOST
BUCKET = "tidelog"
S3_OPTIONS = {"region": "us-east-1", "access_key_id": "testing",
              "secret_access_key": "testing", "allow_http": "true"}
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
MOTO_TIMEOUT = 30.0
MOTO_HINT = "S3 here is moto's server, which is not installed: pip install 'moto[server]'"


class ClusterError(RuntimeError):
    """A command failed; the message is the one line (or log tail) to show."""


# -- command line -----------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`tidelog cluster ...` and its subcommands, each taking `--dir`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default="./cluster",
                        help="where the cluster lives (state in DIR/cluster.json)")
    cluster = sub.add_parser("cluster", help="a local multi-broker cluster: up, status, kill, "
                             "start, add-broker, remove-broker, down")
    actions = cluster.add_subparsers(dest="cluster_command", required=True)
    up = actions.add_parser("up", parents=[common], help="start PostgreSQL, (S3) and brokers")
    # defaults are applied in _spec: None tells a flag not given from one given as default
    up.add_argument("--brokers", type=int, help="how many, node ids 1..N (3)")
    up.add_argument("--zones", help="broker.rack of broker i is zone (i-1) %% n (a,b,c)")
    up.add_argument("--wal", choices=["file", "s3"],
                    help="file (default): a shared WAL directory; s3: an S3 WAL on a local "
                         "moto server")
    up.add_argument("--objects", choices=["file", "s3"],
                    help="file (default): a directory; s3: a bucket on a local moto server")
    up.add_argument("--base-port", type=int,
                    help="Kafka port of broker 1, the next ones follow (9092; 0: free ports, "
                         "chosen at the first up and kept)")
    up.add_argument("--metrics-base-port", type=int,
                    help="metrics port of broker 1, likewise (9464; 0: free ports)")
    up.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a broker setting for every broker (repeatable)")
    actions.add_parser("status", parents=[common],
                       help="brokers, their processes, and the cluster as they report it")
    for name, text in (("kill", "SIGKILL one broker"), ("start", "start one broker again")):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("node", type=int, metavar="NODE", help="its node id")
    actions.add_parser("add-broker", parents=[common],
                       help="start one more broker (the next node id): the balancer gives it "
                            "a share of the partitions")
    remove = actions.add_parser("remove-broker", parents=[common],
                                help="stop a broker for good: it hands its partitions to "
                                     "the others first")
    remove.add_argument("node", type=int, metavar="NODE", help="its node id")
    actions.add_parser("down", parents=[common],
                       help="stop brokers, S3 and PostgreSQL; keep data and logs")


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir).expanduser().resolve()
    command = args.cluster_command
    try:
        if command == "status":
            return status(directory)
        if command != "up" and _recorded(directory) is None:
            return 2  # and no directory made for nothing
        with record.locked(directory):
            if command == "up":
                return up(directory, *_spec(args))
            if command == "kill":
                return kill(directory, args.node)
            if command == "start":
                return start(directory, args.node)
            if command == "add-broker":
                return add_broker(directory)
            if command == "remove-broker":
                return remove_broker(directory, args.node)
            return down(directory)
    except (ClusterError, ClusterStateError, local_postgres.LocalPostgresError) as exc:
        print(f"tidelog cluster: {exc}", file=sys.stderr)
        return 1


UP_FLAGS = ("brokers", "zones", "wal", "objects", "base_port", "metrics_base_port", "set")


def _spec(args: argparse.Namespace) -> tuple[Spec, list[str]]:
    """The cluster `up` was asked for, and the flags given (not left at their default)."""
    given = [k for k in UP_FLAGS if getattr(args, k) is not None]
    brokers: int = 3 if args.brokers is None else args.brokers
    zones = [z.strip() for z in (args.zones or "a,b,c").split(",") if z.strip()]
    base: int = 9092 if args.base_port is None else args.base_port
    metrics_base: int = 9464 if args.metrics_base_port is None else args.metrics_base_port
    settings: list[str] = list(args.set or [])
    if brokers < 1:
        raise ClusterError("--brokers must be at least 1")
    if not zones:
        raise ClusterError("--zones needs at least one zone")
    for flag, port in (("--base-port", base), ("--metrics-base-port", metrics_base)):
        if port != 0 and not 1 <= port <= 65536 - brokers:
            raise ClusterError(f"{flag} {port}: the ports of {brokers} brokers must fit "
                               "in 1..65535 (0: free ports)")
    for pair in settings:
        if "=" not in pair:
            raise ClusterError(f"--set needs key=value, got {pair!r}")
    spec = Spec(brokers=brokers, zones=zones, wal=args.wal or "file",
                objects=args.objects or "file", base_port=base, metrics_base_port=metrics_base,
                settings=settings)
    return spec, given


# -- up ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Started:
    """What this `up` started, to stop again if it fails."""

    brokers: list[BrokerEntry]
    moto: MotoEntry | None = None
    postgres: Path | None = None


def up(directory: Path, spec: Spec, given: list[str] | None = None) -> int:
    """Start the cluster of `directory`: the recorded one if there is one (`given`, the flags
    the user passed, are then compared with it), else a new one as `spec` says."""
    state = record.load(directory)
    if state is not None and any(procs.alive(b.pid, b.argv) for b in state.brokers):
        print(f"cluster in {directory} is already up (`tidelog cluster start NODE` starts "
              "a broker that is down)\n")
        report(sys.stdout, state)
        return 0
    if state is not None:
        asked, recorded = _spec_fields(spec), _spec_fields(state.spec)
        if any(asked[k] != recorded[k] for k in (given or [])):
            print(f"note: {directory} holds a cluster already; starting it as recorded "
                  f"({_describe(state.spec)}); remove the directory for a new one")
        spec = state.spec
        if state.moto is not None and not procs.alive(state.moto.pid, state.moto.argv):
            raise ClusterError(
                f"{directory} holds a cluster on S3 served by moto, which keeps objects in "
                "memory: they went when it stopped, while PostgreSQL still lists them; remove "
                "the directory (or use another --dir) for a new cluster")
    fresh = state is None
    for sub in ("logs", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    started = _Started(brokers=[])
    try:
        state = _bring_up(directory, spec, state, started)
    except BaseException:
        _undo(started)
        if fresh:
            record.remove(directory)
        elif state is not None:
            _mark_stopped(directory, state)
        raise
    print(f"cluster up in {directory}: {_brokers(len(state.brokers))}, metadata on PostgreSQL "
          f"({directory / 'postgres'}), WAL {spec.wal}, objects {spec.objects}"
          + (f" (moto at {state.moto.endpoint})" if state.moto is not None else ""))
    rows = [["node", "zone", "address", "metrics", "pid", "log"]]
    rows += [[str(b.node_id), b.zone, f"{b.host}:{b.port}",
              str(b.metrics_port) if b.metrics_port else "-", str(b.pid), b.log]
             for b in state.brokers]
    for line in table(rows, "  "):
        print(line)
    print(f"bootstrap: {state.bootstrap}")
    return 0


def _brokers(n: int) -> str:
    return f"{n} broker" + ("" if n == 1 else "s")


def _spec_fields(spec: Spec) -> dict[str, object]:
    """A spec by flag name (`set` for `settings`), as the user wrote them."""
    return {"brokers": spec.brokers, "zones": spec.zones, "wal": spec.wal,
            "objects": spec.objects, "base_port": spec.base_port,
            "metrics_base_port": spec.metrics_base_port, "set": spec.settings}


def _describe(spec: Spec) -> str:
    return (f"--brokers {spec.brokers} --zones {','.join(spec.zones)} --wal {spec.wal} "
            f"--objects {spec.objects} --base-port {spec.base_port} "
            f"--metrics-base-port {spec.metrics_base_port}"
            + "".join(f" --set {s}" for s in spec.settings))


def _bring_up(directory: Path, spec: Spec, recorded: ClusterState | None,
              started: _Started) -> ClusterState:
    pg_dir = directory / "postgres"
    was_running = local_postgres.status(pg_dir) is not None
    pg = local_postgres.start(pg_dir)
    if not was_running:
        started.postgres = pg_dir
    moto = recorded.moto if recorded is not None else None
    needs_s3 = "s3" in (spec.wal, spec.objects)
    if needs_s3 and (moto is None or not procs.alive(moto.pid, moto.argv)):
        moto = _start_moto(directory, moto.port if moto is not None else 0)
        started.moto = moto
    state = ClusterState(
        dir=str(directory), state=RUNNING, spec=spec, dsn=pg.dsn, postgres_dir=str(pg_dir),
        wal_uri=_store_uri(spec.wal, directory, "wal", moto),
        objectstore_uri=_store_uri(spec.objects, directory, "objects", moto),
        moto=moto, brokers=[])
    nodes = ([b.node_id for b in recorded.brokers] if recorded is not None
             else list(range(1, spec.brokers + 1)))  # add-broker/remove-broker change them
    for node in nodes:
        old = recorded.broker(node) if recorded is not None else None
        if old is not None:  # the same ports as before: clients know them
            port, metrics_port = old.port, old.metrics_port
        else:  # free ports are picked here, so the argv to rerun names them
            port = spec.base_port + node - 1 if spec.base_port else procs.free_port()
            metrics_port = (spec.metrics_base_port + node - 1 if spec.metrics_base_port
                            else procs.free_port())
        entry = _entry(directory, state, node, port, metrics_port)
        state.brokers.append(entry)
        started.brokers.append(entry)
        _launch(entry, lambda: record.save(directory, state))
        record.save(directory, state)
    return state


def _store_uri(kind: str, directory: Path, name: str, moto: MotoEntry | None) -> str:
    if kind == "file":
        return f"file://{directory / name}"
    assert moto is not None
    return f"s3://{BUCKET}/{name}?" + urlencode({"endpoint": moto.endpoint, **S3_OPTIONS})


def _entry(directory: Path, state: ClusterState, node: int, port: int,
           metrics_port: int) -> BrokerEntry:
    spec = state.spec
    zone = spec.zones[(node - 1) % len(spec.zones)]
    run_dir = directory / "run"
    ready, metrics_ready = run_dir / f"broker-{node}.ready", run_dir / f"broker-{node}.metrics"
    data_dir = directory / f"broker-{node}"
    settings = {
        "node.id": str(node),
        "broker.rack": zone,
        "listeners": f"PLAINTEXT://{HOST}:{port}",
        "metrics.listener": f"http://{HOST}:{metrics_port}",
        "metadata.uri": state.dsn,
        "data.dir": str(data_dir),
        "wal.uri": state.wal_uri,  # a directory: each broker makes its broker-<id>.wal
        "objectstore.uri": state.objectstore_uri,
    }
    argv = [sys.executable, "-m", "tidelog.cli", "server", "--ready-file", str(ready),
            "--metrics-ready-file", str(metrics_ready)]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    for pair in spec.settings:  # after ours: the user's word wins
        argv += ["--set", pair]
    return BrokerEntry(node_id=node, zone=zone, host=HOST, port=port, metrics_port=metrics_port,
                       pid=None, argv=argv, log=str(directory / "logs" / f"broker-{node}.log"),
                       ready_file=str(ready), metrics_ready_file=str(metrics_ready),
                       data_dir=str(data_dir))


def _launch(entry: BrokerEntry, spawned: Callable[[], None]) -> None:
    """Start the broker of `entry` and wait until it serves; sets its pid and the ports it
    reports. `spawned` runs as soon as the pid is known, to record it: if we are killed
    while waiting, `down` still finds the broker. (Right after a kill -9 the broker itself
    waits for its previous registration's lease to expire, up to
    `broker.session.timeout.ms`, before it is ready.)"""
    log, ready = Path(entry.log), Path(entry.ready_file)
    metrics_ready = Path(entry.metrics_ready_file)
    ready.unlink(missing_ok=True)
    metrics_ready.unlink(missing_ok=True)
    offset = procs.log_size(log)
    proc = procs.spawn(entry.argv, log)
    entry.pid = proc.pid
    spawned()
    outcome = procs.wait_ready(proc, ready, READY_TIMEOUT)
    if outcome is procs.Outcome.READY:
        entry.port = int(ready.read_text())
        with contextlib.suppress(OSError, ValueError):  # written before `ready`
            entry.metrics_port = int(metrics_ready.read_text())
        return
    if outcome is procs.Outcome.TIMEOUT:
        procs.signal_group(proc.pid, entry.argv, signal.SIGKILL)
        proc.wait()
        raise ClusterError(f"broker {entry.node_id} was not ready in {READY_TIMEOUT:.0f} s; "
                           f"last 20 lines of {log}:\n{procs.log_tail(log, offset)}")
    raise ClusterError(f"broker {entry.node_id} exited (code {proc.returncode}) before it "
                       f"was ready; last 20 lines of {log}:\n{procs.log_tail(log, offset)}")


def _start_moto(directory: Path, port: int) -> MotoEntry:
    if any(importlib.util.find_spec(m) is None for m in ("moto", "flask", "boto3")):
        raise ClusterError(MOTO_HINT)
    port = port or procs.free_port()
    endpoint = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    log = directory / "logs" / "moto.log"
    offset = procs.log_size(log)
    proc = procs.spawn(argv, log)
    moto = MotoEntry(endpoint=endpoint, port=port, pid=proc.pid, argv=argv, log=str(log))
    deadline = time.monotonic() + MOTO_TIMEOUT
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        if proc.poll() is not None:
            tail = procs.log_tail(log, offset)
            hint = f"\n{MOTO_HINT}" if "ModuleNotFoundError" in tail else ""
            raise ClusterError(f"moto exited (code {proc.returncode}); last lines of {log}:\n"
                               f"{tail}{hint}")
        try:
            with opener.open(endpoint + "/", timeout=1.0):
                break
        except urllib.error.HTTPError:
            break  # it answers: that is all we wait for
        except OSError:
            if time.monotonic() > deadline:
                procs.stop(proc.pid, argv, 5.0)
                raise ClusterError(f"moto did not answer on {endpoint} in "
                                   f"{MOTO_TIMEOUT:.0f} s; see {log}") from None
            time.sleep(0.1)
    try:
        _create_bucket(endpoint)
    except Exception as exc:
        procs.stop(proc.pid, argv, 5.0)
        raise ClusterError(f"cannot create bucket {BUCKET!r} on {endpoint}: {exc}") from exc
    return moto


def _create_bucket(endpoint: str) -> None:
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=S3_OPTIONS["region"],
        aws_access_key_id=S3_OPTIONS["access_key_id"],
        aws_secret_access_key=S3_OPTIONS["secret_access_key"],
        config=BotoConfig(proxies={}))  # {}, not None: no proxy from the environment
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in names:
        client.create_bucket(Bucket=BUCKET)


def _undo(started: _Started) -> None:
    """Stop what a failed `up` started, newest first."""
    for entry in reversed(started.brokers):
        procs.stop(entry.pid, entry.argv, STOP_TIMEOUT)
    if started.moto is not None:
        procs.stop(started.moto.pid, started.moto.argv, 10.0)
    if started.postgres is not None:
        with contextlib.suppress(local_postgres.LocalPostgresError):
            local_postgres.stop(started.postgres)


# -- the other commands -----------------------------------------------------------------------


def _recorded(directory: Path) -> ClusterState | None:
    state = record.load(directory)
    if state is None:
        print(f"tidelog cluster: no cluster in {directory} (no cluster.json; "
              f"`tidelog cluster up --dir {directory}` makes one)", file=sys.stderr)
    return state


def status(directory: Path) -> int:
    state = _recorded(directory)
    if state is None:
        return 2
    return 0 if report(sys.stdout, state) else 1


def _broker(directory: Path, node: int) -> tuple[ClusterState, BrokerEntry] | int:
    state = _recorded(directory)
    if state is None:
        return 2
    entry = state.broker(node)
    if entry is None:
        nodes = ", ".join(str(b.node_id) for b in state.brokers)
        print(f"tidelog cluster: no broker {node} in {directory} (nodes: {nodes})",
              file=sys.stderr)
        return 2
    return state, entry


def kill(directory: Path, node: int) -> int:
    found = _broker(directory, node)
    if isinstance(found, int):
        return found
    _, entry = found
    if not procs.signal_group(entry.pid, entry.argv, signal.SIGKILL):
        print(f"broker {node} is not running")
        return 0
    if not procs.wait_gone(entry.pid, entry.argv, 10.0):
        raise ClusterError(f"broker {node} (pid {entry.pid}) survived SIGKILL for 10 s")
    print(f"broker {node} killed (pid {entry.pid}, SIGKILL to its process group)")
    return 0


def start(directory: Path, node: int) -> int:
    found = _broker(directory, node)
    if isinstance(found, int):
        return found
    state, entry = found
    if state.state != RUNNING:
        raise ClusterError(f"the cluster in {directory} is stopped: "
                           f"`tidelog cluster up --dir {directory}` starts it")
    if procs.alive(entry.pid, entry.argv):
        print(f"broker {node} is already running (pid {entry.pid})")
        return 0
    _launch(entry, lambda: record.save(directory, state))
    record.save(directory, state)
    print(f"broker {node} running on {entry.host}:{entry.port} (pid {entry.pid})")
    return 0


def add_broker(directory: Path) -> int:
    state = _recorded(directory)
    if state is None:
        return 2
    if state.state != RUNNING:
        raise ClusterError(f"the cluster in {directory} is stopped: "
                           f"`tidelog cluster up --dir {directory}` starts it")
    spec = state.spec
    node = max((b.node_id for b in state.brokers), default=0) + 1
    port = spec.base_port + node - 1 if spec.base_port else procs.free_port()
    metrics_port = (spec.metrics_base_port + node - 1 if spec.metrics_base_port
                    else procs.free_port())
    entry = _entry(directory, state, node, port, metrics_port)
    state.brokers.append(entry)
    spec.brokers = len(state.brokers)
    _launch(entry, lambda: record.save(directory, state))
    record.save(directory, state)
    print(f"broker {node} added on {entry.host}:{entry.port} (pid {entry.pid}); the "
          "controller moves a share of the partitions to it")
    return 0


def remove_broker(directory: Path, node: int) -> int:
    found = _broker(directory, node)
    if isinstance(found, int):
        return found
    state, entry = found
    if len(state.brokers) == 1:
        raise ClusterError(f"broker {node} is the last one: `tidelog cluster down` stops it")
    # a SIGTERM is a controlled shutdown: the broker hands its partitions over first
    if procs.signal_group(entry.pid, entry.argv, signal.SIGTERM) \
            and not procs.wait_gone(entry.pid, entry.argv, STOP_TIMEOUT):
        print(f"broker {node} ignored SIGTERM for {STOP_TIMEOUT:.0f} s: SIGKILL (its "
              "partitions are taken over from its WAL)")
        procs.signal_group(entry.pid, entry.argv, signal.SIGKILL)
        procs.wait_gone(entry.pid, entry.argv, 10.0)
    state.brokers = [b for b in state.brokers if b.node_id != node]
    state.spec.brokers = len(state.brokers)
    record.save(directory, state)
    print(f"broker {node} removed: its partitions are on brokers "
          f"{', '.join(str(b.node_id) for b in state.brokers)}")
    return 0


def down(directory: Path) -> int:
    state = _recorded(directory)
    if state is None:
        return 2
    if state.state == STOPPED:
        print(f"the cluster in {directory} is already stopped")
        return 0
    running = [b for b in state.brokers
               if procs.signal_group(b.pid, b.argv, signal.SIGTERM)]
    deadline = time.monotonic() + STOP_TIMEOUT
    for b in running:  # SIGTERM went to all at once: they shut down side by side
        if not procs.wait_gone(b.pid, b.argv, max(0.0, deadline - time.monotonic())):
            print(f"broker {b.node_id} ignored SIGTERM for {STOP_TIMEOUT:.0f} s: SIGKILL")
            procs.signal_group(b.pid, b.argv, signal.SIGKILL)
            procs.wait_gone(b.pid, b.argv, 10.0)
    if state.moto is not None:
        procs.stop(state.moto.pid, state.moto.argv, 10.0)
    local_postgres.stop(Path(state.postgres_dir))
    _mark_stopped(directory, state)
    print(f"stopped {_brokers(len(running))}"
          + (", moto" if state.moto is not None else "") + " and PostgreSQL")
    print(f"data kept in {directory}, logs in {directory / 'logs'}; "
          f"`tidelog cluster up --dir {directory}` starts it again")
    return 0


def _mark_stopped(directory: Path, state: ClusterState) -> None:
    state.state = STOPPED
    for b in state.brokers:
        b.pid = None
    if state.moto is not None:
        state.moto.pid = None
    record.save(directory, state)
