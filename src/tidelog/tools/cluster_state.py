"""`DIR/cluster.json`: what `tidelog cluster up` started and how, so the later commands
(other processes) find the same brokers by PID and rerun them with the same argv."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "cluster.json"
LOCK_FILE = ".cluster.lock"
RUNNING, STOPPED = "running", "stopped"
VERSION = 1


class ClusterStateError(RuntimeError):
    """cluster.json is unreadable, or another command holds the directory."""


@dataclass(slots=True)
class Spec:
    """What the first `up` was asked for; a later `up` of the directory restarts it as is."""

    brokers: int
    zones: list[str]
    wal: str
    objects: str
    base_port: int
    metrics_base_port: int
    settings: list[str]


@dataclass(slots=True)
class BrokerEntry:
    node_id: int
    zone: str
    host: str
    port: int
    metrics_port: int
    """0: metrics off."""
    pid: int | None
    argv: list[str]
    log: str
    ready_file: str
    metrics_ready_file: str
    data_dir: str


@dataclass(slots=True)
class MotoEntry:
    endpoint: str
    port: int
    pid: int | None
    argv: list[str]
    log: str


@dataclass(slots=True)
class ClusterState:
    dir: str
    state: str
    spec: Spec
    dsn: str
    postgres_dir: str
    wal_uri: str
    objectstore_uri: str
    moto: MotoEntry | None
    brokers: list[BrokerEntry]
    version: int = VERSION

    def broker(self, node_id: int) -> BrokerEntry | None:
        return next((b for b in self.brokers if b.node_id == node_id), None)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{b.host}:{b.port}" for b in self.brokers)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> ClusterState:
        moto = data.get("moto")
        return ClusterState(
            dir=data["dir"], state=data["state"], spec=Spec(**data["spec"]), dsn=data["dsn"],
            postgres_dir=data["postgres_dir"], wal_uri=data["wal_uri"],
            objectstore_uri=data["objectstore_uri"],
            moto=MotoEntry(**moto) if moto is not None else None,
            brokers=[BrokerEntry(**b) for b in data["brokers"]],
            version=int(data.get("version", VERSION)),
        )


def load(directory: Path) -> ClusterState | None:
    """The recorded cluster, or None when the directory holds none."""
    path = directory / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return ClusterState.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterStateError(f"{path} is not a cluster record: {exc}") from None


def save(directory: Path, state: ClusterState) -> None:
    """Atomically: a reader never sees half a file."""
    path = directory / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def remove(directory: Path) -> None:
    (directory / STATE_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the directory for one changing command (`up`, `kill`, `start`, `down`), so two
    of them never interleave their writes of cluster.json."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterStateError(
                f"another `tidelog cluster` command is working on {directory}") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
