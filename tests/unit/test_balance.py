"""The balancer's plan: from the most loaded live broker to the least loaded, until no two
differ by more than one; pending moves count at their target and are not moved again."""

from __future__ import annotations

from collections import Counter

from tidelog.controller.balance import MIN_GAP, plan_moves, plan_swaps


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


MB = float(1 << 20)


def loads(owners: dict[int, int], moves: list[tuple[int, int]],
          rates: dict[int, float]) -> dict[int, float]:
    after = dict(owners)
    after.update(moves)
    out: dict[int, float] = {}
    for sid, owner in after.items():
        out[owner] = out.get(owner, 0.0) + rates.get(sid, 0.0)
    return out


def test_two_hot_partitions_on_one_broker_are_parted_keeping_counts_even() -> None:
    owners = {sid: 1 + sid % 3 for sid in range(6)}  # 2 each; 0 and 3 on broker 1
    rates = {0: 10 * MB, 3: 10 * MB}
    moves = plan_swaps(owners, [1, 2, 3], rates)
    assert counts(owners, moves) == {1: 2, 2: 2, 3: 2}
    after = loads(owners, moves, rates)
    assert max(after.values()) == 10 * MB and len(moves) == 2  # one swap
    assert plan_swaps({**owners, **dict(moves)}, [1, 2, 3], rates) == []  # stable


def test_many_uneven_partitions_end_near_the_mean() -> None:
    owners = {sid: 1 + sid % 4 for sid in range(40)}
    rates = {sid: (sid % 7 + 1) * MB * (3 if sid % 4 == 0 else 1) for sid in range(40)}
    before = loads(owners, [], rates)
    moves = plan_swaps(owners, [1, 2, 3, 4], rates)
    after = loads(owners, moves, rates)
    mean = sum(after.values()) / 4
    assert max(before.values()) - min(before.values()) > 0.5 * mean
    assert max(after.values()) - min(after.values()) <= 0.2 * mean
    c = counts(owners, moves)
    assert max(c.values()) - min(c.values()) <= 1
    assert len({sid for sid, _t in moves}) == len(moves)  # nothing moved twice


def test_quiet_clusters_and_pending_moves_are_left_alone() -> None:
    owners = {sid: 1 + sid % 2 for sid in range(4)}
    assert plan_swaps(owners, [1, 2], {0: MIN_GAP / 2}) == []  # not worth a move
    assert plan_swaps(owners, [1, 2], {0: 10 * MB, 2: 10 * MB}, pending={0: 2}) == []
    assert plan_swaps(owners, [1], {0: 10 * MB}) == []


def test_a_partition_hotter_than_the_gap_stays_put() -> None:
    """Moving it would only make the receiver the busy one: no flapping on noisy rates."""
    owners = {0: 1, 1: 1, 2: 2, 3: 2}
    assert plan_swaps(owners, [1, 2], {0: 3.0 * MB, 1: 0.3 * MB, 2: 0.4 * MB}) == []
