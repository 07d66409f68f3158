"""`make conformance`: librdkafka's own integration tests against a Tidelog broker.

Builds (once, cached) librdkafka's test runner from Debian's source package, chooses the tests
that need one PLAINTEXT broker (see docs/compat.md), and runs each test id in its own runner
process, in full mode (never -Q), under a timeout, against a fresh `tidelog server` on a free
port. Prints one line per test and a closing `N passed, M failed`; exits 1 when a test fails
that tests/conformance/known_failures.txt does not list, or when a listed one passes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LISTS = ROOT / "tests" / "conformance"
sys.path[:0] = [str(HERE), str(ROOT)]

from rdk_lists import Result, read_table, retried, verdict  # noqa: E402
from rdk_report import render, update_doc  # noqa: E402
from rdk_suite import (  # noqa: E402
    Job,
    find_source,
    first_failures,
    main_function_calls,
    parse_tests,
    parse_version,
    plan,
    summary_lines,
)
from tests.integration.broker import BrokerProcess  # noqa: E402

from tidelog.config import DEFAULTS  # noqa: E402

# The Kafka release whose API version ranges Tidelog's ApiVersions matches (docs/compat.md).
KAFKA_VERSION = "4.0.0"
# The cluster settings of librdkafka's tests/scenarios/<name>.json that apply to one broker.
# Everything else is Tidelog's default, the WAL's size included (BrokerProcess shrinks it
# for pytest, where ~100 brokers run; here one runs at a time).
SCENARIOS = {
    "default": {"auto.create.topics.enable": "true", "num.partitions": "4"},
    "noautocreate": {"auto.create.topics.enable": "false", "num.partitions": "4"},
}
BROKER_DEFAULTS = {"wal.capacity": DEFAULTS["wal.capacity"]}
BROKER_OVERRIDES: dict[str, str] = {}  # --broker-set, for investigations
CACHE = Path(os.environ.get("TIDELOG_CONFORMANCE_CACHE",
                            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                            / "tidelog-conformance"))
BROKER_START_TRIES = 6  # other work may leave the broker briefly unstartable
BROKER_RETRY_S = 20.0


class Live:
    """The processes running now, so an interrupt (Ctrl-C, SIGTERM) can end them all."""

    lock = threading.Lock()
    runners: set[subprocess.Popen[bytes]] = set()
    brokers: set[BrokerProcess] = set()
    stopping = threading.Event()

    @classmethod
    def end_all(cls) -> None:
        cls.stopping.set()
        with cls.lock:
            for proc in cls.runners:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            for broker in cls.brokers:
                broker.kill()


def build_runner() -> Path:
    out = subprocess.run([str(HERE / "fetch-build.sh")], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return Path(out.strip().splitlines()[-1])


def start_broker(data_dir: Path, settings: dict[str, str]) -> BrokerProcess:
    for attempt in range(1, BROKER_START_TRIES + 1):
        if Live.stopping.is_set():
            raise RuntimeError("interrupted")
        broker = BrokerProcess(data_dir, dict(settings))
        try:
            return broker.start()
        except RuntimeError as exc:
            if attempt == BROKER_START_TRIES:
                raise
            print(f"  broker did not start (try {attempt}): {str(exc).splitlines()[0]}; "
                  f"retrying in {BROKER_RETRY_S:.0f}s", flush=True)
            time.sleep(BROKER_RETRY_S)
    raise AssertionError("unreachable")


def shim_kafka_path(work: Path) -> Path:
    """A $KAFKA_PATH whose bin/kafka-topics.sh and bin/kafka-acls.sh are our Admin-API
    stand-ins (kafka_topics.py, kafka_acls.py)."""
    kpath = work / "kafka"
    (kpath / "bin").mkdir(parents=True, exist_ok=True)
    for tool, impl in (("kafka-topics.sh", "kafka_topics.py"), ("kafka-acls.sh", "kafka_acls.py")):
        script = kpath / "bin" / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / impl}" "$@"\n')
        script.chmod(0o755)
    return kpath


def run_job(job: Job, runner: Path, work: Path, timeout: float, version: str,
            multiplier: float | None, kafka_path: Path, debug: str | None) -> list[Result]:
    work.mkdir(parents=True)
    settings = {**BROKER_DEFAULTS, **SCENARIOS[job.scenario], **BROKER_OVERRIDES}
    broker = start_broker(work / "broker", settings)
    with Live.lock:
        Live.brokers.add(broker)
    try:
        return _run_against(broker, job, runner, work, timeout, version, multiplier,
                            kafka_path, debug)
    finally:
        with Live.lock:
            Live.brokers.discard(broker)
        broker.stop()
        for sub in ("wal", "objects"):  # the WAL file is preallocated: keep only logs
            shutil.rmtree(work / "broker" / sub, ignore_errors=True)


def _run_against(broker: BrokerProcess, job: Job, runner: Path, work: Path, timeout: float,
                 version: str, multiplier: float | None, kafka_path: Path,
                 debug: str | None) -> list[Result]:
    # enable.metrics.push=false: Tidelog does not offer KIP-714's telemetry APIs (nor does
    # Kafka without a client-metrics plugin), so no client ever pushes metrics to it; but
    # librdkafka 2.8.0 still waits up to 1 s at rd_kafka_destroy() for a telemetry
    # condition variable that is signalled without a predicate, and it misses the signal in
    # most destroys on a 2-core machine (0001_multiobj times destroys: docs/compat.md).
    conf = [f"bootstrap.servers={broker.bootstrap}", "enable.metrics.push=false"]
    if multiplier is not None:
        conf.append(f"test.timeout.multiplier={multiplier}")
    (work / "test.conf").write_text("\n".join(conf) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "TESTS", "SUBTESTS", "TESTS_SKIP", "TEST_DEBUG")}
    env.update({
        "RDKAFKA_TEST_CONF": str(work / "test.conf"), "TEST_REPORT": str(work / "report.json"),
        "TEST_KAFKA_VERSION": version, "TEST_SCENARIO": job.scenario, "TESTS": job.number,
        "BROKERS": broker.bootstrap, "KAFKA_PATH": str(kafka_path),
        "LD_LIBRARY_PATH": f"{runner.parent.parent / 'src'}:{runner.parent.parent / 'src-cpp'}",
    })
    if job.subtest:
        env["SUBTESTS"] = job.subtest
    if debug:
        env["TEST_DEBUG"] = debug  # librdkafka's `debug` property for every client
    # full mode: no -Q; -L/-E/-K as upstream's CI; one test at a time
    args = [str(runner), "-p1", "-L", "-E", "-K", "-s", job.scenario]
    if shutil.which("stdbuf"):  # keep the summary table when the runner aborts
        args[:0] = ["stdbuf", "-oL"]
    started = time.monotonic()
    detail = ""
    with open(work / "runner.log", "wb") as log:
        if Live.stopping.is_set():
            raise RuntimeError("interrupted")
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with Live.lock:
            Live.runners.add(proc)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            detail = f"killed after the {timeout:.0f}s timeout"
        finally:
            with Live.lock:
                Live.runners.discard(proc)
    seconds = time.monotonic() - started
    if broker.proc is not None and broker.proc.poll() is not None:
        detail = f"broker exited with code {broker.proc.returncode}; " + detail
    output = (work / "runner.log").read_text(errors="replace")
    states, failures = summary_lines(output), first_failures(output)
    try:
        report = json.loads((work / "report.json").read_text())["tests"]
    except (OSError, ValueError, KeyError):
        report = {}
    if rc != 0 and not detail and not any(n in failures for n in job.names):
        # a failed test makes the runner abort at its end; otherwise this is a crash
        detail = f"runner exited with {rc} (signal {-rc})" if rc < 0 else f"runner exited {rc}"
        if "<MAIN>" in failures:
            detail += f": {failures['<MAIN>']}"
    results = []
    for name, rid in zip(job.names, job.result_ids(), strict=True):
        state = report.get(name, {}).get("state") or states.get(name, ("", ""))[0]
        if name in failures:
            state = "FAILED"
        reason = failures.get(name) or states.get(name, ("", ""))[1]
        if state == "SKIPPED":  # a chosen test that skips itself has not passed
            reason = f"skipped itself: {reason}"
        passed = state == "PASSED" and not detail
        if not passed and not reason:
            reason = f"runner exit code {rc}, state {state or 'unknown'}"
        why = "; ".join(x for x in (detail, "" if passed else reason) if x)
        results.append(Result(rid, passed, why, seconds))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", help="comma-separated test numbers or names (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="runner processes at once")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per runner process")
    p.add_argument("--kafka-version", default=KAFKA_VERSION, help="TEST_KAFKA_VERSION")
    p.add_argument("--timeout-multiplier", type=float,
                   help="test.timeout.multiplier for the runner (default: the runner's 1.0)")
    p.add_argument("--broker-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a broker setting (repeatable), e.g. wal.capacity=67108864")
    p.add_argument("--retries", type=int, default=1,
                   help="run a failed job once more; a pass on retry is reported as flaky")
    p.add_argument("--debug", help="TEST_DEBUG: librdkafka debug contexts, e.g. cgrp,fetch")
    p.add_argument("--runner", type=Path, help="a built tests/test-runner (default: build it)")
    p.add_argument("--out", type=Path, default=CACHE / "runs" / "last",
                   help="logs and results.json (emptied first)")
    p.add_argument("--list", action="store_true", help="print the runner processes and exit")
    p.add_argument("--docs", action="store_true",
                   help="rewrite docs/compat.md's librdkafka table from --out's results.json")
    args = p.parse_args(argv)

    BROKER_OVERRIDES.update(kv.split("=", 1) for kv in args.broker_set)
    runner = args.runner or build_runner()
    tests_dir = runner.parent
    tests = parse_tests((tests_dir / "test.c").read_text())
    excluded = {k: v[0] for k, v in read_table(LISTS / "excluded.txt", 2).items()}
    known = read_table(LISTS / "known_failures.txt", 3)
    names = {t.name for t in tests}
    for key in [*excluded, *known]:
        if key.split("/", 1)[0] not in names:
            raise SystemExit(f"listed test {key} is not in {tests_dir / 'test.c'}")
    split = {k.split("/", 1)[0] for k in excluded if "/" in k}
    subtests = {n: main_function_calls(find_source(tests_dir, n).read_text(), n) for n in split}
    if args.docs:
        catalog = {k: v[0] for k, v in read_table(LISTS / "catalog.txt", 2).items()}
        run = json.loads((args.out / "results.json").read_text())
        update_doc(ROOT / "docs" / "compat.md", render(run, tests, catalog, excluded, known))
        print(f"docs/compat.md updated from {args.out / 'results.json'}")
        return 0
    only = set(args.tests.split(",")) if args.tests else None
    jobs = plan(tests, parse_version(args.kafka_version), excluded, subtests, only)
    if args.list:
        for job in jobs:
            print(f"{job.label}: {', '.join(job.result_ids())}")
        return 0

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    kafka_path = shim_kafka_path(args.out)
    # runners start in <out>/<job>/; tests open files such as ../src/statistics_schema.json
    (args.out / "src").symlink_to(tests_dir.parent / "src")
    print(f"librdkafka {tests_dir.parent.name}, TEST_KAFKA_VERSION={args.kafka_version}, "
          f"{len(jobs)} runner processes, logs in {args.out}", flush=True)
    started = time.monotonic()
    results: list[Result] = []

    def one(job: Job) -> list[Result]:
        if Live.stopping.is_set():
            return []
        work = args.out / re.sub(r"[^\w.-]+", "_", job.label).strip("_")

        def attempt(where: Path) -> list[Result]:
            try:
                return run_job(job, runner, where, args.timeout, args.kafka_version,
                               args.timeout_multiplier, kafka_path, args.debug)
            except Exception as exc:  # a broken broker fails this job, not the whole run
                return [Result(rid, False, f"{type(exc).__name__}: {str(exc)[:300]}")
                        for rid in job.result_ids()]

        first = attempt(work)
        if all(r.passed for r in first) or args.retries < 1 or Live.stopping.is_set():
            return first
        second = retried(first, attempt(work.with_name(work.name + "-retry")))
        crashed = [r for r in second if not r.passed]
        if crashed and all("(signal" in r.detail for r in crashed) \
                and not Live.stopping.is_set():
            # the runner itself died (librdkafka's test runner segfaults now and then in
            # 0113/u under load): a crash says nothing about the broker, so one more try
            return retried(first, attempt(work.with_name(work.name + "-retry2")))
        return second

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    pool = ThreadPoolExecutor(max(1, args.jobs))
    try:
        futures = {pool.submit(one, job): job for job in jobs}
        for fut in as_completed(futures):
            for r in fut.result():
                results.append(r)
                mark = "PASS" if r.passed else ("FAIL (known)" if r.test_id in known else "FAIL")
                if r.passed and r.test_id in known:
                    mark = "PASS (listed as a known failure: take it off the list)"
                line = f"{mark:<6} {r.test_id} ({r.seconds:.0f}s)"
                print(line + (f": {r.detail}" if r.detail else ""), flush=True)
    except KeyboardInterrupt:
        Live.end_all()
        pool.shutdown(cancel_futures=True)
        print("interrupted: runners and brokers ended", flush=True)
        return 130
    pool.shutdown()

    results.sort(key=lambda r: r.test_id)
    v = verdict(results, known)
    (args.out / "results.json").write_text(json.dumps(
        {"kafka_version": args.kafka_version, "librdkafka": tests_dir.parent.name,
         "seconds": round(time.monotonic() - started),
         "results": [r.__dict__ for r in results]}, indent=1))
    for tid in v.new:
        print(f"NEW FAILURE: {tid} (not in tests/conformance/known_failures.txt)")
    for tid in v.fixed:
        print(f"NOW PASSES: {tid}: remove it from tests/conformance/known_failures.txt")
    print(f"run took {time.monotonic() - started:.0f}s; logs in {args.out}")
    print(v.closing_line())
    return 0 if v.ok else 1


if __name__ == "__main__":
    sys.exit(main())
