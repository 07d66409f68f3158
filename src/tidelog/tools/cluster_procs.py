"""The processes of a local cluster, handled by PID only.

Each child runs in a session of its own, so its process group id is its PID and a signal to
the group reaches it and its children and nothing else. Before any signal the PID's command
line is compared with the argv it was started with: a PID the OS has since given to another
program is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

HOST = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PROC = Path("/proc")


class Outcome(Enum):
    READY = "ready"
    EXITED = "exited"
    TIMEOUT = "timeout"


def child_env() -> dict[str, str]:
    """Our environment, with loopback exempt from any HTTP proxy: the children only ever
    talk to each other on 127.0.0.1."""
    env = dict(os.environ)
    for key in ("NO_PROXY", "no_proxy"):
        present = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join(present + [h for h in LOOPBACK if h not in present])
    return env


def spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=child_env())


def alive(pid: int | None, argv: Sequence[str]) -> bool:
    """Whether `pid` is running (not a zombie) and is still the program started as `argv`."""
    if not pid:
        return False
    if not _PROC.is_dir():  # no /proc: the PID alone must do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        cmdline = (_PROC / str(pid) / "cmdline").read_bytes()
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return False
    return cmdline.split(b"\0")[:-1] == [os.fsencode(a) for a in argv]


def signal_group(pid: int | None, argv: Sequence[str], sig: signal.Signals) -> bool:
    """Send `sig` to the process group `pid` leads, if it is still ours; True if sent."""
    if pid is None or not alive(pid, argv):
        return False
    try:
        if os.getpgid(pid) != pid:
            return False  # not a group leader: not something we started
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int | None, argv: Sequence[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid, argv):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(pid: int | None, argv: Sequence[str], timeout: float) -> None:
    """SIGTERM, up to `timeout` seconds to exit, then SIGKILL."""
    if signal_group(pid, argv, signal.SIGTERM) and not wait_gone(pid, argv, timeout):
        signal_group(pid, argv, signal.SIGKILL)
        wait_gone(pid, argv, 10.0)


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, timeout: float) -> Outcome:
    """Wait for the child to write `ready` (it does once serving), to exit, or time out."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            return Outcome.EXITED
        if time.monotonic() > deadline:
            return Outcome.TIMEOUT
        time.sleep(0.05)
    return Outcome.READY


def log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


def log_tail(log: Path, offset: int = 0, lines: int = 20) -> str:
    """The last `lines` lines written after `offset`."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return f"({log} is missing)"
    return "\n".join(text.splitlines()[-lines:]) or f"({log} is empty)"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Collect a child that exited, so it is no zombie while we run on."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(0.1)
