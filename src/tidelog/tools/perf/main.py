"""Entry point of `tidelog perf` (cli.py hands it the arguments after `perf`)."""

from __future__ import annotations

import logging
import sys

from tidelog.tools.perf.config import PerfConfigError, parse_args

log = logging.getLogger("tidelog.perf")


def main(argv: list[str]) -> int:
    try:
        cfg = parse_args(argv)
    except PerfConfigError as exc:
        print(f"tidelog perf: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    from confluent_kafka import KafkaException

    from tidelog.tools.perf.runner import PerfRun

    try:
        report = PerfRun(cfg).run()
    except PerfConfigError as exc:
        print(f"tidelog perf: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, KafkaException, OSError) as exc:  # WorkerError is a RuntimeError
        log.error("tidelog perf failed: %s", exc)
        return 1
    return 130 if report.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
