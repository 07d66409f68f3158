"""A worker process: some of the run's producers and consumers, each on its own thread.

Producer = one thread that claims tickets from the shared `SendSchedule`, sends each due
ticket with produce(), and between sends waits in the producer's poll(), which returns as
soon as a delivery report arrives, so an acknowledgement is timed when it arrives. Consumer =
one thread in a consume() loop that times every record against its `st` header. The
process's main thread answers the coordinator's commands over a pipe (see `Worker.handle`).

Everything here runs once per record, at rates where a microsecond per record is 4% of a
core at 40,000 msg/s: per-record work is kept to what the measurement needs, the rest is
done once per claim, per delivery poll or per consumed batch (see `_Producer._loop`,
`_Consumer._count` and `histogram.Recorder`).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import gc
import itertools
import logging
import operator
import os
import random
import signal
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tidelog.tools.perf.histogram import Recorder
from tidelog.tools.perf.payloads import (
    SEND_TIME_HEADER,
    StickyPartitioner,
    file_values,
    pack_send_time,
    preset_keys,
    random_values,
    read_send_time,
    send_time_header,
)
from tidelog.tools.perf.ratelimit import SendSchedule, TokenBucket
from tidelog.tools.perf.shared import (
    COUNT_SLOT,
    MAX_PHASES,
    PRODUCING_SLOT,
    SharedState,
    count_in_phases,
    phase_of,
)
from tidelog.tools.perf.tally import Tally

log = logging.getLogger("tidelog.perf")
MAX_TICKETS_PER_CLAIM = 256
MIN_SLEEP_NS = 500_000
BUSY_SLEEP_NS = 2_000_000
BUSY_RATE = 10_000
IDLE_POLL_S = 0.01
GC_YOUNG_THRESHOLD = 50_000
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt() params
_ST_FROM = functools.partial(int.from_bytes, byteorder="big", signed=True)
_LITTLE_ENDIAN = sys.byteorder == "little"
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_THIRD, _FOURTH = operator.itemgetter(2), operator.itemgetter(3)
_ST_KEY, _ST_LEN = {SEND_TIME_HEADER}, {8}


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
    """One librdkafka producer on one thread that both sends and serves delivery reports.

    The thread claims due tickets and sends them; between sends it waits in poll(), which
    returns as soon as a delivery report arrives, so acknowledgements are timed when they
    arrive (as a poller thread would) without a second thread: no hand-off of the GIL per
    report, and one wake serves both jobs. A report's callback only files the record's
    times; after each poll() the filed records are counted and timed together
    (`_settle`): the reports one poll() serves arrived together, in one produce response."""

    def __init__(self, spec: ProducerSpec, settings: dict[str, str], values: list[bytes],
                 keys: list[bytes], batch_bytes: int, linger_ms: int, schedule: SendSchedule,
                 state: SharedState) -> None:
        from confluent_kafka import Producer

        self.spec = spec
        self.producer = Producer(settings)
        self.values, self.keys = values, keys
        self.partitioner = StickyPartitioner(spec.partitions, batch_bytes, linger_ms * 1_000_000)
        self.schedule, self.state = schedule, state
        self._view = state.count_view()
        # all values one size: acked bytes are acked records x that size, not summed per record
        self._value_size = len(values[0]) if len({len(v) for v in values}) == 1 else 0
        # written by the producer's thread (sends, and delivery reports served by its polls)
        self.sent = [0] * MAX_PHASES
        self.send_errors = [0] * MAX_PHASES
        self.acked = [0] * MAX_PHASES
        self.failed = [0] * MAX_PHASES
        self.acked_bytes = 0  # only when values differ in size
        self.actual = Recorder()
        self.scheduled = Recorder()
        self.probe_acked = 0
        self.probe_failed = 0
        self.errors_logged = 0
        self.closing = False
        # records acknowledged since the last `_settle`: (st, sent, due[, size]) each
        self._acks: list[tuple[int, ...]] = []
        self._delivered = self._delivery_callback()
        self.thread = threading.Thread(target=self._loop, name=f"produce-{spec.topic}",
                                       daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        """Until closed: while producing, claim due tickets and send one record per ticket;
        otherwise serve delivery reports (while any are outstanding) or wait for producing
        to start. Per record only what the measurement needs is done: a clock reading, the
        `st` header, and a callback carrying the record's times (st, actual and scheduled
        send). Whether producing goes on and the phase sends are counted in are read once
        per claim (a claim is at most MAX_TICKETS_PER_CLAIM records, sent in about a
        millisecond); the partition once per run of records (sticky)."""
        state, schedule, view = self.state, self.schedule, self._view
        produce, poll = self.producer.produce, self._poll
        delivered, partial, topic = self._delivered, functools.partial, self.spec.topic
        values, keys = self.values, self.keys
        # values and keys in a random order, cycled: one C call per record picks each
        next_value = itertools.cycle(random.sample(values, len(values))).__next__
        next_key = itertools.cycle(random.sample(keys, len(keys))).__next__
        size = self._value_size
        partitioner = self.partitioner
        mono, pack, header = time.monotonic_ns, pack_send_time, SEND_TIME_HEADER
        step = 0.0  # ns between tickets at the last claim's rate
        while not self.closing:
            if state.stopping or not view[PRODUCING_SLOT]:
                if len(self.producer) > 0:
                    poll(IDLE_POLL_S)  # returns at once when a report arrives
                else:
                    state.wake.wait(IDLE_POLL_S)  # set the moment producing starts
                continue
            # wait for the next ticket, at least the wake interval unless two or more are
            # due already (then the sender is behind: no wait)
            due = schedule.next_due()
            now = mono()
            if due + step > now:
                self._wait(due, wake_interval_ns(step))
                now = mono()
            ticket, first_due, step, n = schedule.claim(now, MAX_TICKETS_PER_CLAIM)
            if first_due > now:  # another sender took the due ones: wait for this one
                self._wait(first_due, 0, ticket)
                first_due = schedule.due(ticket)
            if not view[PRODUCING_SLOT]:
                continue
            nphases = view[COUNT_SLOT]
            epoch = time.time_ns() - mono()  # st = monotonic send time + epoch
            sts: list[int] = []
            add_st = sts.append
            part = left = 0
            for k in range(n):
                value = next_value()
                now = mono()
                if left == 0:
                    if size:
                        part, left = partitioner.span(size, now, n - k)
                    else:
                        part, left = partitioner.next(len(value), now), 1
                left -= 1
                st = now + epoch
                due = first_due + int(k * step)
                rec = (st, now, due) if size else (st, now, due, len(value))
                try:
                    produce(topic, value, next_key(), part, partial(delivered, rec), None, 0,
                            [(header, pack(st))])
                    add_st(st)
                except BufferError:  # local queue full
                    if self._send_when_room(topic, value, next_key(), part, epoch, due):
                        add_st(st)  # the st of the first try: close enough for the phase
                    elif not view[PRODUCING_SLOT]:
                        break
                except Exception as exc:  # counted and reported, never fatal
                    self.send_errors[view[COUNT_SLOT] - 1] += 1
                    self._log_error(exc)
            self._count_sent(sts, nphases)
        self._settle()

    def _count_sent(self, sts: list[int], nphases: int) -> None:
        """Count a claim's sends (their `st`s, in order) in the phase each was sent in: the
        one current when the claim began, unless another began meanwhile."""
        if not sts:
            return
        if self._view[COUNT_SLOT] == nphases:
            self.sent[nphases - 1] += len(sts)
            return
        count_in_phases(self.sent, sts, *self.state.phases())

    def _poll(self, timeout: float) -> None:
        """poll(): serve delivery reports (waiting up to `timeout` for the first), then
        count and time the acknowledged ones."""
        self.producer.poll(timeout)
        if self._acks:
            self._settle()

    def _settle(self) -> None:
        """Count and time the records acknowledged since the last call, all at once: they
        arrived in the poll() that just returned, so one clock reading times them all."""
        if not self._acks:
            return
        now = time.monotonic_ns()
        acks = self._acks.copy()  # the callback holds this list's append: clear, not swap
        self._acks.clear()
        count_in_phases(self.acked, list(map(_FIRST, acks)), *self.state.phases())
        if not self._value_size:
            self.acked_bytes += sum(map(_FOURTH, acks))
        self.actual.record_since(now, map(_SECOND, acks))
        self.scheduled.record_since(now, map(_THIRD, acks))

    def _send_when_room(self, topic: str, value: bytes, key: bytes, part: int, epoch: int,
                        due: int) -> bool:
        """Retry a send the local queue refused until it fits, serving delivery reports
        meanwhile (they free the queue); False if producing stopped first."""
        while True:
            self._poll(0.001)
            if not self.state.producing:
                return False
            sent = time.monotonic_ns()
            st = sent + epoch
            rec = (st, sent, due) if self._value_size else (st, sent, due, len(value))
            try:
                self.producer.produce(topic, value, key, part,
                                      functools.partial(self._delivered, rec),
                                      None, 0, [(SEND_TIME_HEADER, pack_send_time(st))])
                return True
            except BufferError:
                continue

    def _wait(self, due: int, least: int, ticket: int | None = None) -> None:
        """Wait until `due` (monotonic ns: when `ticket` falls due, or without a ticket
        the next unclaimed one), and at least `least` ns, serving delivery
        reports meanwhile: poll() returns as soon as one arrives, which is then timed, and
        the wait goes on. poll() waits whole milliseconds: less than one left, the wait is
        a precise sleep if no delivery is outstanding, else a millisecond's poll (reports
        are timed on arrival; the next ticket may go out up to a millisecond late, which
        the latency from the scheduled time shows). Waits in slices of at most 20 ms and
        follows rate changes, so a ticket of the warm-up's 1 msg/s does not hold its
        sender for a second."""
        poll, mono, view = self._poll, time.monotonic_ns, self._view
        wait = max(due - mono(), least)
        while wait > 0 and view[PRODUCING_SLOT]:
            if wait >= 1_000_000:
                poll(min(wait, 20_000_000) // 1_000_000 / 1000)
            elif len(self.producer) > 0:
                poll(0.001)
            else:
                time.sleep(wait / 1e9)
            if wait > 20_000_000:
                due = (self.schedule.next_due() if ticket is None
                       else self.schedule.due(ticket))
            wait = due - mono()

    def _delivery_callback(self) -> Callable[[tuple[int, ...], Any, Any], None]:
        """The delivery report callback, called through a `functools.partial` holding the
        record's (st, sent, due[, size]): `st` its epoch send time, `sent` and `due` the
        monotonic times of its actual and scheduled send. It only files acknowledged
        records for `_settle`; a failure is counted here, in the phase of `st`."""
        add = self._acks.append

        def delivered(rec: tuple[int, ...], err: Any, _msg: Any) -> None:
            if err is None:
                add(rec)
            else:
                current, starts = self.state.phases()
                self.failed[phase_of(rec[0], current, starts)] += 1
                self._log_error(err)

        return delivered

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
        acked = list(self.acked)
        for mine, theirs in ((t.sent, list(self.sent)), (t.send_errors, list(self.send_errors)),
                             (t.acked, acked), (t.failed, list(self.failed))):
            for i, n in enumerate(theirs):
                mine[i] += n
        t.acked_bytes += self.acked_bytes + sum(acked) * self._value_size
        t.produce.add(self.actual.snapshot())
        t.produce_sched.add(self.scheduled.snapshot())

    def close(self, timeout: float) -> int:
        """Wait for outstanding deliveries (the producer's thread serves them), then stop
        it. Returns how many were still outstanding."""
        deadline = time.monotonic() + timeout
        while len(self.producer) > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        left = len(self.producer)
        self.closing = True
        self.thread.join(2)
        return int(left)


def wake_interval_ns(step: float) -> int:
    """The least a sender waits for its next ticket, `step` ns apart: MIN_SLEEP_NS, or
    BUSY_SLEEP_NS once the asked rate (all senders) reaches BUSY_RATE. A wake costs tens
    of microseconds of CPU on a virtual machine; at 0.5 ms a sender would wake 2,000 times
    a second. Tickets that fall due meanwhile go out at the next wake, so the rate is
    kept; their delay is part of the latency measured from the scheduled send time."""
    return BUSY_SLEEP_NS if 0 < step <= 1e9 / BUSY_RATE else MIN_SLEEP_NS


class _Consumer:
    """One consumer in one group, reading one topic, on its own thread."""

    def __init__(self, spec: ConsumerSpec, poll_records: int, bucket: TokenBucket | None,
                 state: SharedState) -> None:
        from confluent_kafka import Consumer, Message

        self.spec = spec
        self.consumer = Consumer(spec.settings)
        self._error: Any = Message.error  # unbound methods, for map() over a batch
        self._headers: Any = Message.headers
        self.poll_records = poll_records
        self.bucket, self.state = bucket, state
        self.received = [0] * MAX_PHASES
        self.received_bytes = 0
        self.untagged = 0
        self.e2e = Recorder()
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
        """The hot path: one e2e sample per record, counts per send phase. A batch of the
        tool's own records (no errors, `st` the first header) is read with C-level `map`s
        over the batch, not a Python loop per record; the `st` values are decoded by one
        `array` byteswap, the phases checked on their minimum, the samples recorded by
        `Recorder.record_since`. Other batches take `_collect_slow`, record by record."""
        raw = self._collect_fast(msgs)
        if raw is None:
            raw = self._collect_slow(msgs)
        if self.collect_seen:
            self.seen.update(m.partition() for m in msgs if m.error() is None)
        if not raw:
            return
        decoded = array("q", raw)
        if _LITTLE_ENDIAN:
            decoded.byteswap()
        sts = decoded.tolist()
        count_in_phases(self.received, sts, current, starts)
        self.max_st = max(self.max_st, max(sts))
        self.e2e.record_since(now, sts)

    def _collect_fast(self, msgs: list[Any]) -> bytes | None:
        """The `st` values of `msgs`, joined, when every record is a good one whose first
        header is an 8-byte `st`; None otherwise (nothing counted yet)."""
        if any(map(self._error, msgs)):
            return None
        try:
            firsts = list(map(_FIRST, map(self._headers, msgs)))  # no headers: an error
            values = list(map(_SECOND, firsts))
            if (set(map(_FIRST, firsts)) != _ST_KEY
                    or set(map(len, values)) != _ST_LEN):  # a None value: TypeError
                return None
        except (TypeError, IndexError):
            return None
        self.received_bytes += sum(map(len, msgs))
        return b"".join(values)

    def _collect_slow(self, msgs: list[Any]) -> bytes:
        """`_collect_fast` record by record: skips errors, finds `st` in any position,
        counts records without one as untagged."""
        raw: list[bytes] = []
        nbytes = 0
        for m in msgs:
            if m.error() is None:
                nbytes += len(m)
                st = _send_time(m.headers())
                if st is None:
                    self.untagged += 1
                else:
                    raw.append(pack_send_time(st))
        self.received_bytes += nbytes
        return b"".join(raw)

    def tally_into(self, t: Tally) -> None:
        for i, n in enumerate(list(self.received)):
            t.received[i] += n
        t.received_bytes += self.received_bytes
        t.untagged += self.untagged
        t.e2e.add(self.e2e.snapshot())
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


def _keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of returning it at once.
    librdkafka mallocs a copy of every record and frees it at its delivery report: in a
    py-spy profile at 40,000 msg/s of 1 KB, malloc was a fifth of the producer thread's
    samples, with mprotect (a thread arena's heap growing again after a trim) among them.
    Its effect on the tool's total CPU was within the bench's noise. No-op where the C
    library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for param, value in ((_M_TRIM_THRESHOLD, 64 << 20), (_M_TOP_PAD, 16 << 20),
                         (_M_MMAP_THRESHOLD, 4 << 20)):
        mallopt(param, value)


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
    _keep_freed_memory()
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s worker-{spec.index} %(levelname)s %(message)s")
    try:
        worker = Worker(spec, schedule, bucket, state)
    except Exception as exc:  # sent to the coordinator
        conn.send(("error", f"worker {spec.index} cannot start: {exc}"))
        return
    # Every record allocates objects the cyclic GC tracks (librdkafka's Message, the
    # delivery callback's partial), hundreds alive at once in a consumed batch: at
    # Python's default threshold (700) the GC ran every batch or two and took an eighth
    # of a consumer thread's CPU. They are freed by reference counting, so collect rarely.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
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
