"""The conformance driver's choices: which librdkafka tests run, how, and when a run fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "conformance"))

from rdk_lists import Result, read_table, retried, verdict  # noqa: E402
from rdk_suite import (  # noqa: E402
    main_function_calls,
    parse_tests,
    parse_version,
    plan,
    summary_lines,
)

LISTS = Path(__file__).resolve().parent

TEST_C = """
struct test tests[] = {
    /* Special MAIN test */
    {.name = "<MAIN>", .flags = TEST_F_LOCAL},
    _TEST(0001_multiobj, 0),
    _TEST(0004_conf, TEST_F_LOCAL),
    _TEST(0028_long_topicnames,
          TEST_F_KNOWN_ISSUE,
          TEST_BRKVER(0, 9, 0, 0),
          .extra = "https://example/529"),
    _TEST(0045_subscribe_update, 0, TEST_BRKVER(0, 9, 0, 0)),
    _TEST(0045_subscribe_update_topic_remove,
          0,
          TEST_BRKVER(0, 9, 0, 0),
          .scenario = "noautocreate"),
    _TEST(0045_subscribe_update_mock, TEST_F_LOCAL),
#if WITH_SOCKEM
    _TEST(0049_consume_conn_close, TEST_F_SOCKEM, TEST_BRKVER(0, 9, 0, 0)),
#endif
    _TEST(0055_producer_latency, TEST_F_KNOWN_ISSUE_WIN32),
    _TEST(0101_fetch_from_follower, 0, TEST_BRKVER(2, 4, 0, 0)),
    _TEST(0103_transactions, 0, TEST_BRKVER(0, 11, 0, 0), .scenario = "default,ak23"),
    _TEST(0107_topic_recreate, 0, TEST_BRKVER_TOPIC_ADMINAPI, .scenario = "noautocreate"),
    _TEST(0113_cooperative_rebalance, 0, TEST_BRKVER(2, 4, 0, 0)),
    _TEST(0126_oauthbearer_oidc, 0, TEST_BRKVER(3, 1, 0, 0)),
    _TEST(8000_idle, TEST_F_MANUAL),
    {NULL}};
"""

SOURCE_0113 = """
static void a_assign(void) {
  SUB_TEST_QUICK();
}
static void helper(int x) { return; }
static void o_java(bool close) {
  const char *t = mk("x");
  SUB_TEST("close: %d", close);
}
static void x_last(void) {
  int i;
  SUB_TEST();
}
int main_0113_cooperative_rebalance(int argc, char **argv) {
  a_assign();
  helper(1);
  /* x_commented(); */
  o_java(true);
  o_java(false);
  x_last();
  return 0;
}
"""


def test_parse_reads_flags_versions_and_scenarios() -> None:
    tests = {t.name: t for t in parse_tests(TEST_C)}
    assert "<MAIN>" not in tests and len(tests) == 14
    assert tests["0004_conf"].skip_reason() is not None
    assert tests["0028_long_topicnames"].flags == {"TEST_F_KNOWN_ISSUE"}
    assert tests["0049_consume_conn_close"].flags == {"TEST_F_SOCKEM"}
    assert tests["0055_producer_latency"].skip_reason() is None  # WIN32-only issue
    assert tests["0045_subscribe_update_topic_remove"].scenarios == ("noautocreate",)
    assert tests["0103_transactions"].scenarios == ("default", "ak23")
    assert tests["0107_topic_recreate"].min_version == (0, 10, 2, 0)
    assert tests["0126_oauthbearer_oidc"].min_version == (3, 1, 0, 0)


def test_plan_groups_by_number_and_scenario_and_splits_sub_tests() -> None:
    tests = parse_tests(TEST_C)
    excluded = {"0101_fetch_from_follower": "several brokers",
                "0113_cooperative_rebalance/o_java": "Java"}
    subs = {"0113_cooperative_rebalance": main_function_calls(
        SOURCE_0113, "0113_cooperative_rebalance")}
    jobs = plan(tests, parse_version("4.0.0"), excluded, subs)
    labels = [j.label for j in jobs]
    assert labels == ["0001", "0045", "0045 [noautocreate]", "0055", "0103",
                      "0107 [noautocreate]", "0113/a_assign", "0113/x_last", "0126"]
    assert jobs[1].names == ["0045_subscribe_update"]
    assert jobs[6].result_ids() == ["0113_cooperative_rebalance/a_assign"]
    # an older broker version leaves out the tests that need a newer one
    old = plan(tests, parse_version("2.3.0"), excluded, subs)
    assert [j.label for j in old if j.number in ("0113", "0126")] == []
    only = plan(tests, parse_version("4.0.0"), excluded, subs, only={"0045_subscribe_update"})
    assert [j.label for j in only] == ["0045"]


def test_sub_tests_are_the_functions_main_calls_that_open_a_sub_test() -> None:
    assert main_function_calls(SOURCE_0113, "0113_cooperative_rebalance") == [
        "a_assign", "o_java", "x_last"]
    with pytest.raises(ValueError):
        main_function_calls(SOURCE_0113, "0999_missing")


def test_verdict_fails_on_new_failures_and_on_listed_tests_that_pass() -> None:
    known = {"0002_b": ["5", "no CreatePartitions"], "0003_c": ["8", "x"]}
    results = [Result("0001_a", True), Result("0002_b", False, "boom"), Result("0003_c", True)]
    v = verdict(results, known)
    assert v.fixed == ["0003_c"] and not v.new and not v.ok
    assert v.closing_line() == "2 passed, 1 failed"
    v = verdict([Result("0001_a", False), Result("0002_b", False)], known)
    assert v.new == ["0001_a"] and v.known == ["0002_b"] and not v.ok
    assert v.closing_line() == "0 passed, 2 failed"
    v = verdict([Result("0001_a", True), Result("0002_b", False)], known)
    assert v.ok and v.closing_line() == "1 passed, 1 failed"


def test_summary_table_of_the_runner_is_parsed() -> None:
    out = ("TEST 2026 (bare, scenario default) SUMMARY\n"
           "|\x1b[32m <MAIN>            |     PASSED |   1.000s \x1b[0m|\n"
           "|\x1b[31m 0081_admin        |     FAILED |  12.500s \x1b[0m|\x1b[31m "
           "Expected DescribeConfigs to succeed\x1b[0m\n"
           "|\x1b[32m 0001_multiobj     |     PASSED |   0.066s \x1b[0m|\n")
    assert summary_lines(out) == {"0081_admin": ("FAILED", "Expected DescribeConfigs to succeed"),
                                  "0001_multiobj": ("PASSED", "")}


def test_read_table_rejects_malformed_lines(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("# comment\n\n0001_a | 5 | reason | with a bar\n")
    assert read_table(p, 3) == {"0001_a": ["5", "reason | with a bar"]}
    p.write_text("0001_a | 5\n")
    with pytest.raises(ValueError):
        read_table(p, 3)
    p.write_text("0001_a | r\n0001_a | r\n")
    with pytest.raises(ValueError):
        read_table(p, 2)


def test_the_committed_lists_are_well_formed() -> None:
    excluded = read_table(LISTS / "excluded.txt", 2)
    known = read_table(LISTS / "known_failures.txt", 3)
    assert not set(excluded) & set(known)
    for issue, _reason in known.values():
        assert issue.isdigit(), issue


def test_a_pass_on_retry_is_reported_as_flaky() -> None:
    first = [Result("0001_a", False, "took 1011 ms"), Result("0001_b", True)]
    second = [Result("0001_a", True, "", 2.0), Result("0001_b", False, "boom")]
    got = retried(first, second)
    assert got[0] == Result("0001_a", True, "flaky: the first try failed: took 1011 ms", 2.0)
    assert got[1] == Result("0001_b", False, "boom")  # a failure now is a failure
    assert verdict(got, {}).new == ["0001_b"]
