"""A worker process: some of the run's producers and consumers, each on its own threads.

Producer = a sender thread (claims tickets from the shared `SendSchedule`, sleeps until each
is due, calls produce()) and a poller thread that only serves delivery reports, so an
acknowledgement is timed when it arrives, not when the sender next wakes. Consumer = one
thread in a consume() loop that times every record against its `st` header. The process's
main thread answers the coordinator's commands over a pipe (see `Worker.handle`).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tidelog.tools.perf.histogram import Histogram
from tidelog.tools.perf.payloads import (
    SEND_TIME_HEADER,
    StickyPartitioner,
    file_values,
    preset_keys,
    random_values,
    read_send_time,
    send_time_header,
)
from tidelog.tools.perf.ratelimit import SendSchedule, TokenBucket
from tidelog.tools.perf.shared import MAX_PHASES, SharedState, phase_of
from tidelog.tools.perf.tally import Tally

log = logging.getLogger("tidelog.perf")
MAX_TICKETS_PER_CLAIM = 256
MIN_SLEEP_NS = 500_000
_ST_FROM = functools.partial(int.from_bytes, byteorder="big", signed=True)


@dataclass(frozen=True)
class ProducerSpec:
    topic: str
    partitions: int


@dataclass(frozen=True)
class ConsumerSpec:
    topic: str
    group_index: int
    settings: dict[str, str]


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    producer_settings: dict[str, str]
    producers: list[ProducerSpec] = field(default_factory=list)
    consumers: list[ConsumerSpec] = field(default_factory=list)
    record_size: int = 1024
    random_ratio: float = 0.0
    random_pool_size: int = 1000
    values_file: str | None = None
    sticky_batch_bytes: int = 1_000_000
    sticky_linger_ms: int = 10
    poll_records: int = 500


class _Producer:
    """One librdkafka producer with its sender and delivery-report threads."""

    def __init__(self, spec: ProducerSpec, settings: dict[str, str], values: list[bytes],
                 keys: list[bytes], batch_bytes: int, linger_ms: int, schedule: SendSchedule,
                 state: SharedState) -> None:
        from confluent_kafka import Producer

        self.spec = spec
        self.producer = Producer(settings)
        self.values, self.keys = values, keys
        self.partitioner = StickyPartitioner(spec.partitions, batch_bytes, linger_ms * 1_000_000)
        self.schedule, self.state = schedule, state
        # sender thread writes these
        self.sent = [0] * MAX_PHASES
        self.send_errors = [0] * MAX_PHASES
        # poller thread writes these (delivery reports run on it)
        self.acked = [0] * MAX_PHASES
        self.failed = [0] * MAX_PHASES
        self.acked_bytes = 0
        self.actual = Histogram()
        self.scheduled = Histogram()
        self.probe_acked = 0
        self.probe_failed = 0
        self._phases = state.phases()
        self.errors_logged = 0
        self.closing = False
        self.sender = threading.Thread(target=self._send_loop, name=f"send-{spec.topic}",
                                       daemon=True)
        self.poller = threading.Thread(target=self._poll_loop, name=f"poll-{spec.topic}",
                                       daemon=True)
        self.sender.start()
        self.poller.start()

    def _send_loop(self) -> None:
        rng = random.Random()
        state, schedule = self.state, self.schedule
        nvalues, nkeys = len(self.values), len(self.keys)
        while not state.stopping:
            if not state.producing:
                state.wake.wait(0.5)
                continue
            ticket, first_due, step, n = schedule.claim(time.monotonic_ns(),
                                                        MAX_TICKETS_PER_CLAIM)
            if n == 1:
                first_due = self._wait_due(ticket, first_due)
            phases = state.phases()
            for k in range(n):
                if not state.producing:
                    break
                value = self.values[rng.randrange(nvalues)] if nvalues > 1 else self.values[0]
                self._send(first_due + int(k * step), value, self.keys[rng.randrange(nkeys)],
                           phases)

    def _wait_due(self, ticket: int, due: int) -> int:
        """Sleep until `ticket` is due, at least MIN_SLEEP_NS: at high rates the next claim
        then takes the tickets that fell due meanwhile in one go (a sleep per ticket would
        cost more CPU than the send). Sleeps in slices and follows rate changes, so a
        ticket taken at the warm-up's 1 msg/s does not hold its sender for a second."""
        slept = False
        while True:
            wait = due - time.monotonic_ns()
            if (wait <= 0 and slept) or not self.state.producing:
                return due
            time.sleep(min(max(wait, MIN_SLEEP_NS), 20_000_000) / 1e9)
            slept = True
            due = self.schedule.due(ticket)

    def _send(self, due: int, value: bytes, key: bytes, phases: tuple[int, list[int]]
              ) -> None:
        sent = time.monotonic_ns()
        part = self.partitioner.next(len(value), sent)
        while True:
            st = time.time_ns()
            sent = time.monotonic_ns()
            try:
                self.producer.produce(
                    self.spec.topic, value=value, key=key, partition=part,
                    headers=[(SEND_TIME_HEADER, send_time_header(st))],
                    on_delivery=functools.partial(self._delivered, due, sent, st, len(value)))
                self.sent[phase_of(st, *phases)] += 1
                return
            except BufferError:  # local queue full: the poller thread drains it
                time.sleep(0.001)
                if not self.state.producing:
                    return
            except Exception as exc:  # counted and reported, never fatal
                self.send_errors[phase_of(st, *phases)] += 1
                self._log_error(exc)
                return

    def _delivered(self, due: int, sent: int, st: int, size: int, err: Any, _msg: Any
                   ) -> None:
        """Delivery report (poller thread). Tagged with the phase of `st` here, not at send
        time: by now the coordinator has surely written a phase start that `st` follows."""
        now = time.monotonic_ns()
        if self.state.phase_count() != self._phases[0] + 1:
            self._phases = self.state.phases()
        phase = phase_of(st, *self._phases)
        if err is not None:
            self.failed[phase] += 1
            self._log_error(err)
            return
        self.acked[phase] += 1
        self.acked_bytes += size
        self.actual.record((now - sent) // 1000)
        self.scheduled.record((now - due) // 1000)

    def _probe_delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.probe_acked += 1
        else:
            self.probe_failed += 1
            self._log_error(err)

    def _log_error(self, err: object) -> None:
        if self.errors_logged < 5:
            self.errors_logged += 1
            log.warning("produce to %s failed: %s", self.spec.topic, err)

    def _poll_loop(self) -> None:
        while not self.closing:
            self.producer.poll(0.1)

    def probe(self) -> int:
        """One small record to every partition, so consumers can show the topic is ready."""
        for part in range(self.spec.partitions):
            while True:
                try:
                    self.producer.produce(
                        self.spec.topic, value=b"\x01", key=b"probe", partition=part,
                        headers=[(SEND_TIME_HEADER, send_time_header(time.time_ns()))],
                        on_delivery=self._probe_delivered)
                    break
                except BufferError:
                    time.sleep(0.01)
        return self.spec.partitions

    def tally_into(self, t: Tally) -> None:
        for mine, theirs in ((t.sent, self.sent), (t.send_errors, self.send_errors),
                             (t.acked, self.acked), (t.failed, self.failed)):
            for i, n in enumerate(list(theirs)):
                mine[i] += n
        t.acked_bytes += self.acked_bytes
        t.produce.add(self.actual.copy())
        t.produce_sched.add(self.scheduled.copy())

    def close(self, timeout: float) -> int:
        """Wait for outstanding deliveries (the poller serves them), then stop threads.
        Returns how many were still outstanding."""
        deadline = time.monotonic() + timeout
        while len(self.producer) > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        left = len(self.producer)
        self.closing = True
        self.sender.join(2)
        self.poller.join(2)
        return int(left)


class _Consumer:
    """One consumer in one group, reading one topic, on its own thread."""

    def __init__(self, spec: ConsumerSpec, poll_records: int, bucket: TokenBucket | None,
                 state: SharedState) -> None:
        from confluent_kafka import Consumer

        self.spec = spec
        self.consumer = Consumer(spec.settings)
        self.poll_records = poll_records
        self.bucket, self.state = bucket, state
        self.received = [0] * MAX_PHASES
        self.received_bytes = 0
        self.untagged = 0
        self.e2e = Histogram()
        self.max_st = 0
        self.seen: set[int] = set()  # partitions seen while `collect_seen`
        self.collect_seen = False
        self.assigned = threading.Event()
        self.paused = False
        self._repause = False
        self._commands: collections.deque[tuple[str, Any]] = collections.deque()
        self._done = threading.Event()
        self.closing = False
        self.consumer.subscribe([spec.topic], on_assign=self._on_assign)
        self.thread = threading.Thread(target=self._loop, name=f"consume-{spec.topic}",
                                       daemon=True)
        self.thread.start()

    def _on_assign(self, _consumer: Any, _partitions: Any) -> None:
        self.assigned.set()
        if self.paused:
            self._repause = True

    def command(self, name: str, arg: Any = None) -> threading.Event:
        done = threading.Event()
        self._commands.append((name, (arg, done)))
        return done

    def _run_command(self, name: str, arg: Any) -> None:
        value, done = arg
        try:
            if name == "pause":
                self.paused = True
                self.consumer.pause(self.consumer.assignment())
            elif name == "catchup":
                self._catch_up(value)
        except Exception as exc:  # reported; the run goes on
            log.warning("consumer of %s: %s failed: %s", self.spec.topic, name, exc)
        finally:
            done.set()

    def _catch_up(self, timestamp_ms: int | None) -> None:
        """Seek every assigned partition to `timestamp_ms` (None: the beginning), resume."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        assignment = self.consumer.assignment()
        if assignment:
            if timestamp_ms is None:
                targets = [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)
                           for tp in assignment]
            else:
                asked = [TopicPartition(tp.topic, tp.partition, timestamp_ms)
                         for tp in assignment]
                targets = self.consumer.offsets_for_times(asked, timeout=60)
                for tp in targets:
                    if tp.offset < 0:  # nothing at or after the time: the end
                        tp.offset = OFFSET_END
            self.consumer.resume(assignment)
            for tp in targets:
                self.consumer.seek(tp)
        self.paused = False

    def _loop(self) -> None:
        c = self.consumer
        state, bucket = self.state, self.bucket
        while not self.closing:
            while self._commands:
                self._run_command(*self._commands.popleft())
            try:
                msgs = self._next_batch(c)
            except Exception as exc:  # e.g. closed under us at shutdown
                if not self.closing:
                    log.warning("consume from %s failed: %s", self.spec.topic, exc)
                    time.sleep(0.1)
                continue
            if self._repause and self.paused:
                self._repause = False
                c.pause(c.assignment())
            if not msgs:
                continue
            now = time.time_ns()
            current, starts = state.phases()
            self._count(msgs, now, current, starts)
            if bucket is not None:
                wait = bucket.take(len(msgs), time.monotonic_ns())
                if wait > 0:
                    time.sleep(wait / 1e9)
        self._done.set()

    def _next_batch(self, c: Any) -> list[Any]:
        """What is there now, up to `poll_records`; else wait up to 0.1 s for one record.
        (consume(n, timeout) would wait for n records or the timeout, delaying each batch.)"""
        msgs: list[Any] = c.consume(num_messages=self.poll_records, timeout=0)
        if msgs:
            return msgs
        first = c.poll(0.1)
        if first is None:
            return []
        if self.poll_records > 1:
            return [first, *c.consume(num_messages=self.poll_records - 1, timeout=0)]
        return [first]

    def _count(self, msgs: list[Any], now: int, current: int, starts: list[int]) -> None:
        """The hot loop: one e2e sample per record, counts per send phase."""
        record = self.e2e.record
        received = self.received
        current_start = starts[current]
        nbytes = 0
        max_st = self.max_st
        for m in msgs:
            if m.error() is not None:
                continue
            value = m.value()
            if value is not None:
                nbytes += len(value)
            st = _send_time(m.headers())
            if st is None:
                self.untagged += 1
                continue
            record((now - st) // 1000)
            if st >= current_start:
                received[current] += 1
            else:
                received[phase_of(st, current, starts)] += 1
            if st > max_st:
                max_st = st
            if self.collect_seen:
                self.seen.add(m.partition())
        self.received_bytes += nbytes
        self.max_st = max_st

    def tally_into(self, t: Tally) -> None:
        for i, n in enumerate(list(self.received)):
            t.received[i] += n
        t.received_bytes += self.received_bytes
        t.untagged += self.untagged
        t.e2e.add(self.e2e.copy())
        t.max_st = max(t.max_st, self.max_st)

    def close(self, timeout: float = 10.0) -> None:
        """Leave the group and commit, on a helper thread: librdkafka's close can wait for
        a broker that is gone, and a run must end anyway."""
        self.closing = True
        self._done.wait(5)

        def close() -> None:
            try:
                self.consumer.close()
            except Exception as exc:  # closing anyway
                log.debug("close consumer of %s: %s", self.spec.topic, exc)
        closer = threading.Thread(target=close, daemon=True)
        closer.start()
        closer.join(timeout)


def _send_time(headers: list[tuple[str, bytes]] | None) -> int | None:
    if not headers:
        return None
    key, value = headers[0]
    if key == SEND_TIME_HEADER and value is not None and len(value) == 8:
        return _ST_FROM(value)
    for key, value in headers:
        if key == SEND_TIME_HEADER and value is not None and len(value) == 8:
            return read_send_time(value)
    return None


class Worker:
    def __init__(self, spec: WorkerSpec, schedule: SendSchedule, bucket: TokenBucket | None,
                 state: SharedState) -> None:
        if spec.values_file:
            values = file_values(spec.values_file)
        else:
            values = random_values(spec.record_size, spec.random_ratio, spec.random_pool_size)
        keys = preset_keys()
        self.state = state
        # consumers first, as the original: they join their groups while producers start
        self.consumers = [_Consumer(c, spec.poll_records, bucket, state) for c in spec.consumers]
        self.producers = [_Producer(p, spec.producer_settings, values, keys,
                                    spec.sticky_batch_bytes, spec.sticky_linger_ms, schedule,
                                    state)
                          for p in spec.producers]

    def tally(self) -> Tally:
        t = Tally(cpu_s=time.process_time())
        for p in self.producers:
            p.tally_into(t)
        for c in self.consumers:
            c.tally_into(t)
        return t

    def status(self) -> dict[str, Any]:
        return {
            "assigned": sum(1 for c in self.consumers if c.assigned.is_set()),
            "consumers": len(self.consumers),
            "seen": sorted({(c.spec.topic, p) for c in self.consumers for p in list(c.seen)}),
            "probe_acked": sum(p.probe_acked for p in self.producers),
            "probe_failed": sum(p.probe_failed for p in self.producers),
        }

    def handle(self, cmd: str, args: tuple[Any, ...]) -> Any:
        if cmd == "status":
            return self.status()
        if cmd == "probe":
            return sum(p.probe() for p in self.producers)
        if cmd == "collect_seen":
            for c in self.consumers:
                c.collect_seen = bool(args[0])
            return None
        if cmd == "pause":
            self._all([c.command("pause") for c in self.consumers])
            return None
        if cmd == "catchup":
            topics, timestamps = args  # set of topics; group index -> ms (or None)
            self._all([c.command("catchup", timestamps.get(c.spec.group_index))
                       for c in self.consumers if c.spec.topic in topics])
            return None
        if cmd == "flush":
            timeout = float(args[0])
            left = 0
            deadline = time.monotonic() + timeout
            for p in self.producers:
                while len(p.producer) > 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                left += len(p.producer)
            return left
        raise ValueError(f"unknown command {cmd!r}")

    @staticmethod
    def _all(events: list[threading.Event], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for e in events:
            e.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> Tally:
        self.state.stop()
        for p in self.producers:
            p.close(5.0)
        for c in self.consumers:
            c.closing = True
        for c in self.consumers:
            c.close()
        return self.tally()


def _exit() -> NoReturn:
    """End the process without the interpreter's teardown, where destroying a client that
    could not close (its broker gone) would block."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(spec: WorkerSpec, conn: Any, schedule: SendSchedule, bucket: TokenBucket | None,
         state: SharedState) -> None:
    """Process entry point: build the clients, then answer commands until `close`.
    Every answer is ("ok", value) or ("error", message); `tally` answers with the
    cumulative Tally (the coordinator takes differences)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s worker-{spec.index} %(levelname)s %(message)s")
    try:
        worker = Worker(spec, schedule, bucket, state)
    except Exception as exc:  # sent to the coordinator
        conn.send(("error", f"worker {spec.index} cannot start: {exc}"))
        return
    conn.send(("ok", None))
    while True:
        try:
            cmd, args = conn.recv()
        except (EOFError, OSError):  # coordinator gone
            worker.close()
            _exit()
        if cmd == "close":
            conn.send(("ok", worker.close()))
            _exit()
        try:
            reply = worker.tally() if cmd == "tally" else worker.handle(cmd, args)
            conn.send(("ok", reply))
        except Exception as exc:  # sent to the coordinator
            conn.send(("error", f"worker {spec.index}: {cmd} failed: {exc}"))
