"""The librdkafka table of docs/compat.md, rendered from a run's results.json.

`run.py --docs` rewrites the part of docs/compat.md between the two markers below, so the
published matrix is always the output of a real run, never edited by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rdk_suite import RunnerTest

BEGIN = "<!-- conformance:librdkafka:begin -->"
END = "<!-- conformance:librdkafka:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(run: dict[str, Any], tests: list[RunnerTest], catalog: dict[str, str],
           excluded: dict[str, str], known: dict[str, list[str]]) -> str:
    """Markdown: a summary line, then one row per broker test (and per sub-test run alone):
    passes, known failures with reason and issue, other failures, exclusions."""
    results = {r["test_id"]: r for r in run["results"]}
    rows: list[tuple[str, str, str]] = []
    counts = {"pass": 0, "fail": 0, "excluded": 0, "not run": 0}
    local = 0
    for t in tests:
        flag_reason = t.skip_reason()
        if flag_reason and "TEST_F_LOCAL" in t.flags:
            local += 1
            continue
        ids = [t.name] + sorted(k for k in {*results, *excluded} if k.startswith(t.name + "/"))
        for tid in ids:
            what = catalog.get(tid, "")
            if flag_reason:
                result, key = f"not run: {flag_reason}", "not run"
            elif tid in excluded:
                result, key = f"excluded: {excluded[tid]}", "excluded"
            elif tid in results:
                r = results[tid]
                if r["passed"]:
                    result, key = ("pass" if not r["detail"] else f"pass ({r['detail']})"), "pass"
                elif tid in known:
                    issue, reason = known[tid]
                    ref = f"issue {issue}" if issue.isdigit() else issue
                    result, key = f"**fail**: {reason} ({ref})", "fail"
                else:
                    result, key = f"**fail** (not yet analysed): {r['detail']}", "fail"
            elif tid == t.name and len(ids) > 1:
                rows.append((tid, what, "run one sub-test per process: see below"))
                continue
            else:
                continue  # not in this run (e.g. below its minimum broker version)
            counts[key] += 1
            rows.append((tid, what, result))
    head = (f"librdkafka {run['librdkafka'].removeprefix('librdkafka-')} tests against one "
            f"Tidelog broker, TEST_KAFKA_VERSION={run['kafka_version']}, full mode: "
            f"**{counts['pass']} pass, {counts['fail']} fail**, {counts['excluded']} excluded, "
            f"{counts['not run']} not run by their flags; {local} local or mock-cluster tests "
            f"(runner flag -L) need no broker and are not listed. The run took "
            f"{run['seconds'] // 60} min.")
    lines = [head, "", "| Test | What it checks | Result |", "|---|---|---|"]
    lines += [f"| {tid} | {_cell(what)} | {_cell(result)} |" for tid, what, result in rows]
    return "\n".join(lines) + "\n"


def update_doc(path: Path, table: str) -> None:
    """Replace what lies between the markers in `path` with `table`."""
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {BEGIN} ... {END} section")
    path.write_text(text[:start + len(BEGIN)] + "\n" + table + text[end:])
