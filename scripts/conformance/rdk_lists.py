"""The conformance run's hand-kept lists (tests/conformance/*.txt) and the verdict over a run.

Each list is one entry a line, fields separated by `|`, `#` starting a comment line:
- excluded.txt: `test id | reason` - tests (or `test/sub_test`) not run, and why;
- known_failures.txt: `test id | issue | reason` - tests expected to fail today.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def read_table(path: Path, fields: int) -> dict[str, list[str]]:
    """Entries by their first field; each with exactly `fields` fields."""
    out: dict[str, list[str]] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|", fields - 1)]
        if len(parts) != fields or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected {fields} non-empty `|` fields")
        if parts[0] in out:
            raise ValueError(f"{path}:{lineno}: {parts[0]} listed twice")
        out[parts[0]] = parts[1:]
    return out


@dataclass(frozen=True)
class Result:
    """The outcome of one test id in this run."""

    test_id: str
    passed: bool
    detail: str = ""  # the runner's failure reason, a timeout, a crash
    seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    passed: list[str]
    known: list[str]  # failed, and listed
    new: list[str]  # failed, not listed: a regression
    fixed: list[str]  # listed, but passed: take it off the list

    @property
    def ok(self) -> bool:
        return not self.new and not self.fixed

    def closing_line(self) -> str:
        return f"{len(self.passed)} passed, {len(self.known) + len(self.new)} failed"


def verdict(results: list[Result], known_failures: dict[str, list[str]]) -> Verdict:
    """Regressions stop a build, pending features do not; a listed failure that passes
    also stops it, so the list only shrinks. A listed test id not run here is ignored (the
    run may be a subset)."""
    passed = [r.test_id for r in results if r.passed and r.test_id not in known_failures]
    fixed = [r.test_id for r in results if r.passed and r.test_id in known_failures]
    known = [r.test_id for r in results if not r.passed and r.test_id in known_failures]
    new = [r.test_id for r in results if not r.passed and r.test_id not in known_failures]
    return Verdict(passed + fixed, known, new, fixed)


def retried(first: list[Result], second: list[Result]) -> list[Result]:
    """The second try's results; a test that failed first and passed now says so in its
    detail, so a flaky test shows in the table instead of hiding behind the pass."""
    failed_first = {r.test_id: r.detail for r in first if not r.passed}
    return [Result(r.test_id, r.passed,
                   f"flaky: the first try failed: {failed_first[r.test_id]}"
                   if r.passed and r.test_id in failed_first else r.detail,
                   r.seconds) for r in second]
