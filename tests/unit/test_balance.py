"""The balancer's plan: from the most loaded live broker to the least loaded, until no two
differ by more than one; pending moves count at their target and are not moved again."""

from __future__ import annotations

from collections import Counter

from tidelog.controller.balance import plan_moves


def counts(owners: dict[int, int], moves: list[tuple[int, int]]) -> Counter[int]:
    after = dict(owners)
    after.update(moves)
    return Counter(after.values())


def test_a_joining_broker_gets_its_share() -> None:
    owners = {sid: 1 + sid % 3 for sid in range(12)}  # 4 each on brokers 1-3
    moves = plan_moves(owners, [1, 2, 3, 4])
    assert counts(owners, moves) == {1: 3, 2: 3, 3: 3, 4: 3}
    assert all(target == 4 for _sid, target in moves) and len(moves) == 3


def test_balanced_is_left_alone_and_one_broker_plans_nothing() -> None:
    owners = {0: 1, 1: 2, 2: 3, 3: 1}
    assert plan_moves(owners, [1, 2, 3]) == []
    assert plan_moves(owners, [1]) == []


def test_pending_moves_count_at_their_target_and_stay() -> None:
    owners = {sid: 1 for sid in range(6)}
    moves = plan_moves(owners, [1, 2], pending={5: 2, 4: 2})
    assert 5 not in dict(moves) and 4 not in dict(moves)
    assert counts(owners, [*moves, (5, 2), (4, 2)]) == {1: 3, 2: 3}


def test_streams_of_brokers_not_live_are_left_to_takeover() -> None:
    owners = {0: 1, 1: 1, 2: 9, 3: 9, 4: 9}
    moves = plan_moves(owners, [1, 2])
    assert moves == [(1, 2)]


def test_limit() -> None:
    owners = {sid: 1 for sid in range(10)}
    assert len(plan_moves(owners, [1, 2], limit=2)) == 2


def test_every_topic_spreads() -> None:
    topic_of = {sid: "a" if sid < 6 else "b" for sid in range(12)}
    owners = {sid: 1 for sid in range(12)}
    moves = plan_moves(owners, [1, 2], topic_of=topic_of)
    moved = Counter(topic_of[sid] for sid, _t in moves)
    assert moved == {"a": 3, "b": 3}
