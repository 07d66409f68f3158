"""librdkafka's test list, read from its tests/test.c, and the plan of runner processes.

The runner has no dry-run mode, so the `tests[]` table in test.c is the only place that says
which tests need a broker (no TEST_F_LOCAL), which need socket emulation (TEST_F_SOCKEM),
which scenario (broker configuration) each expects and from which Kafka version it applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

Version = tuple[int, int, int, int]

# Flags whose tests the conformance run leaves out, as upstream's own CI does with `-L -E -K`:
# local (mock cluster, no broker), socket emulation, manual, and librdkafka's own known issues.
# KNOWN_ISSUE_WIN32/OSX are 0 on Linux.
SKIPPED_FLAGS = {
    "TEST_F_LOCAL": "local test (mock cluster or no broker at all): runner flag -L",
    "TEST_F_SOCKEM": "needs socket emulation (sockem): runner flag -E",
    "TEST_F_MANUAL": "manual test, never run automatically",
    "TEST_F_KNOWN_ISSUE": "flagged TEST_F_KNOWN_ISSUE by librdkafka: upstream's CI skips it "
                          "on every broker (runner flag -K)",
}
MACRO_VERSIONS = {"TEST_BRKVER_TOPIC_ADMINAPI": (0, 10, 2, 0)}


@dataclass(frozen=True)
class RunnerTest:
    """One entry of test.c's tests[] table."""

    name: str  # e.g. 0045_subscribe_update
    flags: frozenset[str]
    scenarios: tuple[str, ...] = ("default",)
    min_version: Version = (0, 0, 0, 0)

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]

    def skip_reason(self) -> str | None:
        """Why the conformance run leaves this test out by its flags, or None."""
        for flag, reason in SKIPPED_FLAGS.items():
            if flag in self.flags:
                return reason
        return None


def parse_version(text: str) -> Version:
    parts = [int(p) for p in text.split(".")]
    if not 3 <= len(parts) <= 4:
        raise ValueError(f"version {text!r}: expected N.N.N[.N]")
    parts += [0] * (4 - len(parts))
    return (parts[0], parts[1], parts[2], parts[3])


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def parse_tests(test_c: str) -> list[RunnerTest]:
    """Every test in the `struct test tests[]` table of test.c, in table order."""
    start = test_c.find("struct test tests[] = {")
    end = test_c.find("{NULL}", start)
    if start < 0 or end < 0:
        raise ValueError("no `struct test tests[]` table in test.c")
    table = _strip_comments(test_c[start:end])
    out = []
    chunks = table.split("_TEST(")[1:]
    for chunk in chunks:
        m = re.match(r"\s*(\w+)\s*,\s*([^,)]*)", chunk)
        if not m:
            raise ValueError(f"unparsable test entry: {chunk[:60]!r}")
        name, flag_expr = m.group(1), m.group(2)
        flags = frozenset(f for f in re.findall(r"TEST_F_\w+", flag_expr)
                          if not f.endswith(("_WIN32", "_OSX")))
        minver: Version = (0, 0, 0, 0)
        if v := re.search(r"TEST_BRKVER\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)",
                          chunk):
            minver = (int(v[1]), int(v[2]), int(v[3]), int(v[4]))
        for macro, version in MACRO_VERSIONS.items():
            if macro in chunk:
                minver = version
        scen = re.search(r'\.scenario\s*=\s*"([^"]*)"', chunk)
        scenarios = tuple(scen.group(1).split(",")) if scen else ("default",)
        out.append(RunnerTest(name, flags, scenarios, minver))
    return out


def _body(src: str, open_brace_end: int) -> str:
    """The text of a brace block, from just after its `{` to its matching `}`."""
    depth, i = 1, open_brace_end
    while depth and i < len(src):
        depth += {"{": 1, "}": -1}.get(src[i], 0)
        i += 1
    return src[open_brace_end:i]


def main_function_calls(source: str, name: str) -> list[str]:
    """The sub-test functions `main_<name>` calls, in order, without repeats: the static
    functions of the file whose body calls SUB_TEST(). A runner process given
    SUBTESTS=<func> runs only that one (the runner matches sub-test names by substring)."""
    src = _strip_comments(source)
    m = re.search(r"int\s+main_" + re.escape(name) + r"\s*\([^)]*\)\s*\{", src)
    if not m:
        raise ValueError(f"main_{name} not found")
    body = _body(src, m.end())
    subtests = {f.group(1) for f in re.finditer(r"static\s+void\s+(\w+)\s*\([^)]*\)\s*\{", src)
                if re.search(r"\bSUB_TEST(_QUICK)?\(", _body(src, f.end()))}
    calls: list[str] = []
    for call in re.findall(r"\b(\w+)\s*\(", body):
        if call in subtests and call not in calls:
            calls.append(call)
    return calls


def find_source(tests_dir: Path, name: str) -> Path:
    """The file defining main_<name>: tests/<number>-*.c or .cpp."""
    number = name.split("_", 1)[0]
    for path in sorted(tests_dir.glob(f"{number}-*")):
        if path.suffix in (".c", ".cpp") and f"main_{name}(" in path.read_text(errors="replace"):
            return path
    raise FileNotFoundError(f"no source file defines main_{name}")


@dataclass
class Job:
    """One runner process: TESTS=<number> in one scenario, optionally one sub-test."""

    number: str
    scenario: str
    names: list[str]
    subtest: str | None = None
    excluded_subtests: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.number + (f"/{self.subtest}" if self.subtest else "") + (
            f" [{self.scenario}]" if self.scenario != "default" else "")

    def result_ids(self) -> list[str]:
        """The ids this job's results are reported under."""
        if self.subtest:
            return [f"{n}/{self.subtest}" for n in self.names]
        return list(self.names)


def plan(tests: list[RunnerTest], version: Version, excluded: dict[str, str],
         subtests: dict[str, list[str]], only: set[str] | None = None) -> list[Job]:
    """Runner processes for the chosen tests: broker tests that apply to `version`, minus
    `excluded` (by test name). A test with excluded sub-tests ("name/subtest" keys) is run
    once per remaining sub-test, `subtests` giving its sub-test functions in order. `only`:
    test numbers, names or result ids to keep."""
    jobs: dict[tuple[str, str], Job] = {}
    split: list[Job] = []
    for t in tests:
        if t.skip_reason() or t.min_version > version or t.name in excluded:
            continue
        # the first scenario the runner will accept: "default" where it is listed
        scenario = "default" if "default" in t.scenarios else t.scenarios[0]
        dropped = [k.split("/", 1)[1] for k in excluded if k.startswith(t.name + "/")]
        if dropped:
            for sub in subtests.get(t.name, []):
                if sub not in dropped:
                    split.append(Job(t.number, scenario, [t.name], sub, dropped))
            continue
        jobs.setdefault((t.number, scenario), Job(t.number, scenario, [])).names.append(t.name)
    ordered = sorted([*jobs.values(), *split], key=lambda j: (j.number, j.scenario != "default"))
    if only is not None:
        ordered = [j for j in ordered if j.number in only or only & {*j.names, *j.result_ids()}]
    return ordered


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summary_lines(output: str) -> dict[str, tuple[str, str]]:
    """name -> (state, reason) from the runner's closing summary table."""
    out = {}
    for line in ANSI.sub("", output).splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 5 and cells[0] == "" and re.match(r"\d{4}_", cells[1]):
            out[cells[1]] = (cells[2], cells[4])
    return out


FAILED_AT = re.compile(r'^### Test "(\d{4}_\w+|<MAIN>)(?: \((.*)\))?" failed at (\S+?) at .*###$')


def first_failures(output: str) -> dict[str, str]:
    """name -> its first failure, "where: why", from the runner's log. The summary table
    is lost when the runner aborts (stdout is buffered); these lines are not. The runner's
    own failures (e.g. threads left running after the tests) are under "<MAIN>"."""
    out: dict[str, str] = {}
    lines = ANSI.sub("", output).splitlines()
    for i, line in enumerate(lines):
        m = FAILED_AT.match(line.strip())
        if m and m.group(1) not in out:
            why = lines[i + 1].strip() if i + 1 < len(lines) else ""
            where = f"{m.group(2)}: " if m.group(2) else ""
            out[m.group(1)] = f"{where}{why}"[:400]
    return out
