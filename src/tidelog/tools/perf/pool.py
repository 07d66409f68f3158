"""The worker processes, started with `spawn` (librdkafka's threads do not survive fork),
and the request/answer exchange with them over pipes."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tidelog.tools.perf import worker
from tidelog.tools.perf.ratelimit import SendSchedule, TokenBucket
from tidelog.tools.perf.shared import SharedState

log = logging.getLogger("tidelog.perf")


class WorkerError(RuntimeError):
    pass


class WorkerPool:
    def __init__(self, ctx: Any, specs: list[worker.WorkerSpec], schedule: SendSchedule,
                 bucket: TokenBucket | None, state: SharedState, timeout: float = 120.0) -> None:
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker.main, args=(spec, child, schedule, bucket, state),
                               name=f"perf-worker-{spec.index}", daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self._gather(timeout)

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

    def call(self, cmd: str, *args: Any, timeout: float = 120.0) -> list[Any]:
        """Send `cmd` to every worker, then collect the answers in worker order."""
        for conn in self.conns:
            conn.send((cmd, args))
        return self._gather(timeout)

    def _gather(self, timeout: float) -> list[Any]:
        out = []
        errors = []
        for i, conn in enumerate(self.conns):
            try:
                if not conn.poll(timeout):
                    raise WorkerError(f"worker {i} did not answer in {timeout:.0f}s")
                status, value = conn.recv()
            except (EOFError, OSError) as exc:
                raise WorkerError(f"worker {i} died (exit code {self.procs[i].exitcode})"
                                  ) from exc
            if status == "error":
                errors.append(str(value))
            out.append(value)
        if errors:
            raise WorkerError("; ".join(errors))
        return out

    def close(self, timeout: float = 60.0) -> list[Any]:
        """Ask every worker to close its clients; returns their last tallies (None for a
        worker that could not answer). Worker processes are ended in any case."""
        finals: list[Any] = []
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("close", ()))
        for conn in self.conns:
            try:
                finals.append(conn.recv()[1] if conn.poll(timeout) else None)
            except (EOFError, OSError):
                finals.append(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                log.warning("worker %s did not exit: terminating it", proc.name)
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()
        return finals
