"""`tidelog perf` report maths: histogram buckets and percentiles, merges across processes,
rates, backlog, phase tagging, the shared send schedule and the sticky partitioner; and the
workers' hot paths (the latency recorder, a consumer's batch counting)."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from tidelog.tools.perf import chart
from tidelog.tools.perf.histogram import (
    FAST_LIMIT,
    Histogram,
    Recorder,
    highest,
    index,
    lowest,
    merge,
)
from tidelog.tools.perf.payloads import (
    StickyPartitioner,
    random_values,
    read_send_time,
    send_time_header,
)
from tidelog.tools.perf.ratelimit import MIN_RATE, SendSchedule, TokenBucket, ramp_rate
from tidelog.tools.perf.report import (
    Interval,
    PhaseTotals,
    accounting,
    backlog,
    interval_line,
    latency_figures,
    rate,
    series,
    summary_text,
)
from tidelog.tools.perf.shared import SharedState, count_in_phases, phase_of
from tidelog.tools.perf.tally import Tally
from tidelog.tools.perf.worker import (
    BUSY_RATE,
    BUSY_SLEEP_NS,
    MIN_SLEEP_NS,
    _Consumer,
    wake_interval_ns,
)

CTX = multiprocessing.get_context("spawn")


def exact_percentile(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_buckets_are_exact_below_2048_and_within_a_thousandth_above() -> None:
    for v in range(0, 2048):
        assert lowest(index(v)) == v == highest(index(v))
    rng = random.Random(7)
    for v in [2048, 2049, 4095, 4096, 10**6, 3_600_000_000] + [rng.randrange(2048, 10**9)
                                                            for _ in range(2000)]:
        i = index(v)
        assert lowest(i) <= v <= highest(i)
        assert highest(i) - lowest(i) + 1 <= v / 1024 + 1
    # buckets are contiguous: the next one starts where this one ends
    for i in range(1000, 50_000, 7):
        assert lowest(i + 1) == highest(i) + 1


def test_percentiles_match_exact_ones_to_the_bucket() -> None:
    rng = random.Random(1)
    values = [int(rng.lognormvariate(7, 1.5)) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.count == len(values)
    assert h.mean() == pytest.approx(sum(values) / len(values))
    for p in (0.0, 50, 75, 90, 95, 99, 99.9, 99.99, 100):
        exact = exact_percentile(values, max(p, 1e-9))
        got = h.percentile(p)
        assert highest(index(exact)) == got, p  # the bucket's top, as HdrHistogram reports
        assert got >= exact and got - exact <= exact / 1024 + 1
    assert h.max() == highest(index(max(values)))
    assert h.min() == lowest(index(min(values)))


def test_microsecond_resolution_small_values() -> None:
    h = Histogram()
    for v in (1, 2, 3, 999, 1000, 1001):
        h.record(v)
    assert h.percentiles([1, 50, 100]) == [1, 3, 1001]
    h.record(-5)  # a clock step backwards counts as 0, never as a negative bucket
    assert h.min() == 0


def test_merge_equals_one_histogram_of_everything() -> None:
    rng = random.Random(3)
    parts = [[rng.randrange(1, 5_000_000) for _ in range(3000)] for _ in range(4)]
    hs = []
    whole = Histogram()
    for values in parts:
        h = Histogram()
        for v in values:
            h.record(v)
            whole.record(v)
        hs.append(h)
    merged = merge(hs)
    assert merged.counts == whole.counts and merged.sum == whole.sum
    assert merged.quantiles() == whole.quantiles()


def test_minus_gives_what_was_recorded_since_a_copy() -> None:
    h = Histogram()
    for v in (10, 20, 30):
        h.record(v)
    before = h.copy()
    for v in (20, 5000):
        h.record(v)
    delta = h.minus(before)
    assert delta.count == 2 and delta.sum == 5020
    assert delta.percentiles([1, 100]) == [20, highest(index(5000))]
    assert Histogram().minus(Histogram()).count == 0


def test_sparse_form_round_trips_through_json() -> None:
    h = Histogram()
    for v in (1, 7, 7, 123456):
        h.record(v)
    back = Histogram.from_sparse(json.loads(json.dumps(h.to_sparse())))
    assert back.counts == h.counts and back.sum == h.sum
    with pytest.raises(ValueError):
        Histogram.from_sparse({"buckets": [], "sum": 0})


def test_quantile_map_is_monotonic_and_ends_at_max() -> None:
    h = Histogram()
    for v in range(1, 10_001):
        h.record(v)
    q = h.quantiles()
    keys = sorted(q, key=float)
    assert float(keys[0]) == 0.0 and keys[-1] == "100.0"
    values = [q[k] for k in keys]
    assert values == sorted(values) and values[-1] == h.max()
    assert q["50.0"] == h.percentile(50) and q["75.0"] == h.percentile(75)
    assert q["99.609375"] == h.percentile(99.609375)  # 100 - 100/2^8: a level's start
    assert Histogram().quantiles() == {}


def _tally(acked: int, received: int, lat: list[int], cpu: float = 0.0) -> Tally:
    t = Tally(cpu_s=cpu)
    t.acked[1] = acked
    t.sent[1] = acked
    t.received[1] = received
    t.acked_bytes = acked * 100
    t.received_bytes = received * 100
    for v in lat:
        t.produce.record(v)
        t.produce_sched.record(v + 10)
        t.e2e.record(v * 2)
    return t


def test_rates_backlog_and_phase_totals() -> None:
    assert rate(500, 2.0) == 250 and rate(5, 0) == 0
    assert backlog(4, 100, 350) == 50 and backlog(1, 10, 20) == 0
    totals = PhaseTotals("test")
    for i in range(3):
        iv = Interval("test", i + 1.0, 2.0, _tally(200, 400, [100, 200, 300], cpu=0.5), 0, 25.0,
                      {42: 50.0})
        assert iv.figures()["produceRate"] == 100.0
        assert iv.figures()["consumeThroughputBps"] == 20_000.0
        totals.add(iv)
    f = totals.figures()
    assert totals.seconds == 6.0
    assert f["produceCountTotal"] == 600 and f["produceRateTotal"] == 100.0
    assert f["consumeCountTotal"] == 1200 and f["consumeRateTotal"] == 200.0
    assert f["produceLatency50thTotalMicros"] == 200
    assert f["produceLatencyFromSchedule50thTotalMicros"] == 210
    assert f["endToEndLatencyMaxTotalMicros"] == 600
    assert f["cpu"]["toolSeconds"] == 1.5 and f["cpu"]["toolPercent"] == 25.0
    assert f["cpu"]["monitored"]["42"] == {"seconds": 3.0, "percent": 50.0}
    text = summary_text(totals)
    assert "p99.99" in text and "end-to-end" in text and "0.200" in text


def test_tally_add_and_minus_per_phase() -> None:
    a = _tally(10, 20, [5])
    b = _tally(1, 2, [7])
    b.failed[2] = 3
    b.max_st = 99
    total = Tally()
    total.add(a)
    total.add(b)
    assert total.acked[1] == 11 and total.failed[2] == 3 and total.errors_total == 3
    assert total.max_st == 99 and total.produce.count == 2
    assert total.minus(a).acked[1] == 1 and total.minus(a).e2e.count == 1
    rows = accounting(["prepare", "test", "drain"], total, groups=2)
    assert rows[1] == {"phase": "test", "sent": 11, "acked": 11, "failed": 0, "received": 22,
                       "expectedReceived": 22}
    assert rows[2]["failed"] == 3


def test_latency_figures_names_and_interval_line() -> None:
    t = _tally(10, 10, [1000, 2000, 3000])
    names = set(latency_figures(t.produce))
    assert names == {"Mean", "Min", "50th", "75th", "90th", "95th", "99th", "999th", "9999th",
                     "Max"}
    line = interval_line(Interval("warmup", 3.0, 1.0, t, 5, 12.5, {7: 80.0}), "[warmup 50%]")
    assert "Prod      10.00 msg/s" in line and "pid 7 80.0%" in line
    assert "E2E ms avg 4.000" in line and "Sched ms" in line


def test_series_and_chart_render() -> None:
    ivs = [Interval("warmup" if i < 2 else "test", float(i), 1.0,
                    _tally(100 * i, 100 * i, [1000 + i]), 0, 10.0, {5: 20.0})
           for i in range(5)]
    s = series(ivs)
    assert s["timeSecs"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert s["phase"][:3] == ["warmup", "warmup", "test"]
    assert s["produceRate"] == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert s["cpuMonitoredPercent"][0] == {"5": 20.0}
    totals = PhaseTotals("test")
    for iv in ivs[2:]:
        totals.add(iv)
    report = {**s, **totals.figures(), "startMs": 0, "measuredPhase": "test",
              "phases": [{"name": "warmup", "startMs": 0, "endMs": 2000},
                         {"name": "test", "startMs": 2000, "endMs": 5000}],
              "config": {"bootstrap_server": "b:1"}, "summaryText": summary_text(totals)}
    page = chart.render(report)
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 4
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org", "")
    assert "Latency by percentile (test)" in page
    assert ">0%<" in page and ">50%<" in page  # percentile axis ticks


def test_phase_tagging_by_send_time() -> None:
    starts = [100, 200, 300]
    assert phase_of(250, 2, starts) == 1
    assert phase_of(300, 2, starts) == 2
    assert phase_of(50, 2, starts) == 0
    assert read_send_time(send_time_header(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    assert len(send_time_header(1)) == 8 and send_time_header(1) == b"\0" * 7 + b"\1"


def test_counting_a_batch_by_phase() -> None:
    """Sends, acknowledgements and receipts are counted per batch: all in the current
    phase at once, or record by record when the batch straddles a phase start."""
    starts = [100, 200, 300]
    counts = [0] * 4
    count_in_phases(counts, [300, 350, 301], 2, starts)
    assert counts == [0, 0, 3, 0]
    count_in_phases(counts, [150, 299, 300, 50], 2, starts)
    assert counts == [2, 1, 4, 0]
    count_in_phases(counts, [199, 200], 1, starts[:2])  # phase 2 not begun for this reader
    assert counts == [3, 2, 4, 0]


def test_send_schedule_is_uniform_and_keeps_its_count_across_rate_changes() -> None:
    s = SendSchedule(CTX)
    s.set_rate(1000, now_ns=0)
    ticket, due, step, n = s.claim(now_ns=0, max_tickets=100)
    assert (ticket, due, n) == (0, 0, 1) and step == 1e6
    ticket, due, step, n = s.claim(now_ns=10_500_000, max_tickets=100)  # 10.5 ms later
    assert (ticket, due, n) == (1, 1_000_000, 10)  # tickets 1..10 fell due
    ticket, due, _, n = s.claim(now_ns=10_500_000, max_tickets=100)
    assert (ticket, due, n) == (11, 11_000_000, 1)  # none due: the next one, in the future
    ticket, due, _, n = s.claim(now_ns=100_000_000, max_tickets=5)
    assert n == 5 and due == 12_000_000  # capped, the rest stay due
    # at 20 ms the schedule had 20 tickets due; from there 10 a second
    s.set_rate(10, now_ns=20_000_000)
    assert s.due(21) == 20_000_000 + 100_000_000
    assert s.due(17) == 20_000_000 - 300_000_000  # claimed late: due in the past, as before
    with pytest.raises(ValueError):
        s.set_rate(0, now_ns=0)


def test_send_schedule_total_matches_rate_over_time() -> None:
    """A sender that sends due tickets at once and holds a future one until it falls due
    sends exactly rate x time, each ticket at its own slot."""
    s = SendSchedule(CTX)
    s.set_rate(5000, now_ns=0)
    sent: list[int] = []
    held: int | None = None
    for ms in range(0, 1001):
        now = ms * 1_000_000
        if held is not None and held <= now:
            sent.append(held)
            held = None
        while held is None:
            _, due, step, n = s.claim(now_ns=now, max_tickets=7)
            dues = [due + int(k * step) for k in range(n)]
            if dues[0] > now:
                held = dues[0]
            else:
                sent.extend(dues)
    assert len(sent) == 5001  # tickets 0..5000 are due by 1 s
    assert all(b - a == 200_000 for a, b in zip(sent, sent[1:], strict=False))


def test_token_bucket_caps_the_rate_with_a_tenth_of_a_second_burst() -> None:
    b = TokenBucket(CTX, 1000, now_ns=0)
    assert b.capacity == 100
    assert b.take(100, now_ns=0) == 0
    assert b.take(50, now_ns=0) == 50_000_000  # in debt: 50 tokens at 1000/s
    assert b.take(1, now_ns=1_000_000_000) == 0  # refilled, capped at capacity
    assert b.take(100, now_ns=1_000_000_000) == 1_000_000


def test_sticky_partitioner_fills_a_batch_then_moves() -> None:
    p = StickyPartitioner(8, batch_size=3000, linger_ns=10**9, rng=random.Random(2))
    picks = [p.next(1000, now_ns=0) for _ in range(9)]
    assert picks[0] == picks[1] == picks[2] != picks[3]
    assert picks[3] == picks[4] == picks[5] != picks[6]
    every = StickyPartitioner(8, batch_size=0, linger_ns=10**9, rng=random.Random(2))
    seq = [every.next(10, now_ns=0) for _ in range(20)]
    assert all(a != b for a, b in zip(seq, seq[1:], strict=False))  # batch.size=0: each moves
    timed = StickyPartitioner(8, batch_size=10**9, linger_ns=10, rng=random.Random(2))
    first = timed.next(1, now_ns=0)
    assert timed.next(1, now_ns=5) == first and timed.next(1, now_ns=10) != first
    assert StickyPartitioner(1, 0, 0).next(5, 0) == 0


def test_random_values() -> None:
    assert random_values(100, 0.0, 10) == [bytes(100)]
    vals = random_values(100, 0.25, 10, random.Random(1))
    assert len(vals) == 10 and all(len(v) == 100 and v[25:] == bytes(75) for v in vals)
    assert len(set(vals)) == 10


def test_warmup_ramp_rises_linearly_over_the_first_half_then_holds() -> None:
    ramp = (100.0, 130.0)  # a one-minute warm-up ramps over its first 30 s
    assert ramp_rate(100.0, ramp, 1001.0) == MIN_RATE == 1.0
    assert ramp_rate(115.0, ramp, 1001.0) == 501.0
    assert ramp_rate(130.0, ramp, 1001.0) == 1001.0
    assert ramp_rate(150.0, ramp, 1001.0) == 1001.0  # second half: the full rate
    assert ramp_rate(90.0, ramp, 1001.0) == 1.0


def test_sticky_partitioner_span_gives_what_next_gives_record_by_record() -> None:
    rng = random.Random(5)
    for _ in range(300):
        parts, batch = rng.choice([1, 2, 16]), rng.choice([0, 1, 500, 3000, 10**6])
        linger, size, seed = rng.choice([0, 10, 10**9]), rng.choice([1, 100, 1024]), rng.random()
        one = StickyPartitioner(parts, batch, linger, rng=random.Random(seed))
        runs = StickyPartitioner(parts, batch, linger, rng=random.Random(seed))
        now, want, got = 0, [], []
        for _ in range(20):  # bursts of records sent at about the same time
            n = rng.randrange(1, 50)
            want += [one.next(size, now) for _ in range(n)]
            left = n
            while left:
                part, count = runs.span(size, now, left)
                assert 1 <= count <= left
                got += [part] * count
                left -= count
            now += rng.choice([1, 5, 20])
        assert got == want


def test_next_due_is_the_due_time_of_the_next_claim() -> None:
    s = SendSchedule(CTX)
    s.set_rate(1000, now_ns=0)
    assert s.next_due() == 0
    s.claim(now_ns=10_500_000, max_tickets=100)  # tickets 0..10
    assert s.next_due() == 11_000_000
    assert s.claim(now_ns=10_500_000, max_tickets=100)[1] == s.due(11) == 11_000_000
    s.set_rate(10, now_ns=20_000_000)
    assert s.next_due() == s.due(12) and s.next_due() < 20_000_000  # late tickets stay late


def test_recorder_records_what_a_histogram_records() -> None:
    rng = random.Random(9)
    values = [rng.randrange(-5, 3000) for _ in range(2000)]
    values += [int(rng.lognormvariate(9, 1.5)) for _ in range(20_000)]  # some past FAST_LIMIT
    values += [FAST_LIMIT - 1, FAST_LIMIT, 10**12]
    h, rec, bulk = Histogram(), Recorder(), Recorder()
    for v in values:
        h.record(v)
        rec.record(v)
    bulk.record_many(values)
    now = 10**18
    since = Recorder()
    since.record_since(now, [now - v * 1000 - rng.randrange(1000) for v in values])
    for r in (rec, bulk, since):
        snap = r.snapshot()
        assert snap.counts == h.counts and snap.sum == h.sum
    assert any(v >= FAST_LIMIT for v in values) and any(v < 0 for v in values)
    # snapshots are independent copies, and merge like histograms
    first = rec.snapshot()
    rec.record(7)
    assert rec.snapshot().minus(first).counts == {7: 1}
    merged = Histogram()
    merged.add(first)
    merged.add(first)
    assert merged.count == 2 * len(values)


def test_senders_wake_less_often_at_high_rates() -> None:
    assert wake_interval_ns(1e9 / 1000) == MIN_SLEEP_NS == 500_000
    assert wake_interval_ns(1e9 / 9999) == MIN_SLEEP_NS
    assert wake_interval_ns(1e9 / BUSY_RATE) == BUSY_SLEEP_NS == 2_000_000
    assert wake_interval_ns(1e9 / 40_000) == BUSY_SLEEP_NS
    assert wake_interval_ns(0.0) == MIN_SLEEP_NS  # no claim yet


def _consumer(starts: list[int]) -> tuple[Any, SharedState]:
    """A _Consumer's counting state without a client (its hot path, `_count`, only)."""
    state = SharedState(CTX)
    for st in starts:
        state.begin_phase(st)
    c = _Consumer.__new__(_Consumer)
    c.received, c.received_bytes, c.untagged = [0] * 16, 0, 0
    c.e2e, c.max_st, c.collect_seen, c.seen = Recorder(), 0, True, set()
    c._error, c._headers = Message.error, Message.headers
    return c, state


def test_consumer_counts_a_batch_by_send_phase_with_one_e2e_sample_per_record() -> None:
    now = 1_700_000_000_000_000_000
    starts = [now - 10_000_000_000, now - 5_000_000]  # phase 1 began 5 ms ago
    c, state = _consumer(starts)
    sts = [now - 9_000_000, now - 4_000_000, now - 1_500_000, now - 2_000]
    msgs = [Message(topic="t", partition=i % 3, value=b"v" * 10,
                    headers=[("st", send_time_header(st))]) for i, st in enumerate(sts)]
    c._count(msgs, now, *state.phases())  # the fast path: every record the tool's
    assert c.received[:2] == [1, 3] and c.received_bytes == 40 and c.untagged == 0
    assert c.max_st == sts[-1] and c.seen == {0, 1, 2}
    assert sorted(c.e2e.snapshot().counts) == [2, 1500, index(4000), index(9000)]
    # a batch with an error, a foreign record and `st` not first: record by record
    odd = [Message(topic="t", value=b"x", headers=[("k", b"1"), ("st", send_time_header(now))]),
           Message(topic="t", value=b"yy"),
           Message(topic="t", error=KafkaError(KafkaError._PARTITION_EOF))]
    c._count(odd, now, *state.phases())
    assert c.received[:2] == [1, 4] and c.received_bytes == 43 and c.untagged == 1
    assert c.e2e.snapshot().count == 5
