"""The KIP-848 server-side assignors: balance, range semantics, stickiness."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from tidelog.coordinator.assignors import MemberAssignment, MemberSpec, range_, uniform

A, B, C = (uuid.UUID(int=i) for i in (1, 2, 3))


def flat(a: MemberAssignment) -> set[tuple[uuid.UUID, int]]:
    return {(t, p) for t, ps in a.items() for p in ps}


def counts(result: dict[str, MemberAssignment]) -> dict[str, int]:
    return {m: len(flat(a)) for m, a in result.items()}


def check_complete(members: dict[str, MemberSpec], partitions: dict[uuid.UUID, int],
                   result: dict[str, MemberAssignment]) -> None:
    """Every partition of a subscribed topic is given exactly once, to a subscriber."""
    assert set(result) == set(members)
    seen: set[tuple[uuid.UUID, int]] = set()
    for m, a in result.items():
        tps = flat(a)
        assert not tps & seen, f"{m} got a partition twice"
        seen |= tps
        for t, _p in tps:
            assert t in members[m].topics
    subscribed = set().union(*(s.topics for s in members.values())) & partitions.keys()
    assert seen == {(t, p) for t in subscribed for p in range(partitions[t])}


def test_uniform_three_members_twelve_partitions() -> None:
    members = {m: MemberSpec(frozenset({A})) for m in ("m1", "m2", "m3")}
    result = uniform(members, {A: 12})
    check_complete(members, {A: 12}, result)
    assert counts(result) == {"m1": 4, "m2": 4, "m3": 4}


def test_uniform_balances_across_topics() -> None:
    members = {f"m{i}": MemberSpec(frozenset({A, B})) for i in range(5)}
    parts = {A: 7, B: 5}
    result = uniform(members, parts)
    check_complete(members, parts, result)
    assert sorted(counts(result).values()) == [2, 2, 2, 3, 3]


def test_uniform_is_sticky_when_a_member_joins() -> None:
    first = uniform({m: MemberSpec(frozenset({A})) for m in ("m1", "m2")}, {A: 12})
    members = {m: MemberSpec(frozenset({A}), first[m]) for m in ("m1", "m2")}
    members["m3"] = MemberSpec(frozenset({A}))
    second = uniform(members, {A: 12})
    check_complete(members, {A: 12}, second)
    assert counts(second) == {"m1": 4, "m2": 4, "m3": 4}
    # Only the partitions the newcomer needs move; the others keep theirs.
    for m in ("m1", "m2"):
        assert flat(second[m]) <= flat(first[m])


def test_uniform_is_sticky_when_a_member_leaves() -> None:
    ids = ("m1", "m2", "m3")
    first = uniform({m: MemberSpec(frozenset({A})) for m in ids}, {A: 12})
    members = {m: MemberSpec(frozenset({A}), first[m]) for m in ("m1", "m3")}
    second = uniform(members, {A: 12})
    check_complete(members, {A: 12}, second)
    assert counts(second) == {"m1": 6, "m3": 6}
    for m in ("m1", "m3"):
        assert flat(first[m]) <= flat(second[m])


def test_uniform_drops_unsubscribed_and_vanished_partitions() -> None:
    stale = {A: frozenset(range(10)), B: frozenset({0})}
    members = {"m1": MemberSpec(frozenset({A}), stale), "m2": MemberSpec(frozenset({A}))}
    result = uniform(members, {A: 4})  # A shrank to 4 partitions, m1 left B
    check_complete(members, {A: 4}, result)
    assert counts(result) == {"m1": 2, "m2": 2}


def test_uniform_heterogeneous_subscriptions() -> None:
    members = {"m1": MemberSpec(frozenset({A})), "m2": MemberSpec(frozenset({A, B})),
               "m3": MemberSpec(frozenset({B, C}))}
    parts = {A: 6, B: 6, C: 3}
    result = uniform(members, parts)
    check_complete(members, parts, result)
    assert counts(result) == {"m1": 5, "m2": 5, "m3": 5}


def test_uniform_no_members_and_no_topics() -> None:
    assert uniform({}, {A: 3}) == {}
    members = {"m1": MemberSpec(frozenset({A}))}
    assert uniform(members, {}) == {"m1": {}}


def test_range_gives_contiguous_co_partitioned_ranges() -> None:
    members = {m: MemberSpec(frozenset({A, B})) for m in ("mb", "ma")}
    result = range_(members, {A: 5, B: 5})
    assert result["ma"] == {A: frozenset({0, 1, 2}), B: frozenset({0, 1, 2})}
    assert result["mb"] == {A: frozenset({3, 4}), B: frozenset({3, 4})}


def test_range_per_topic_subscribers_only() -> None:
    members = {"m1": MemberSpec(frozenset({A})), "m2": MemberSpec(frozenset({A, B})),
               "m3": MemberSpec(frozenset({B}))}
    parts = {A: 4, B: 3}
    result = range_(members, parts)
    check_complete(members, parts, result)
    assert result["m1"] == {A: frozenset({0, 1})}
    assert result["m2"] == {A: frozenset({2, 3}), B: frozenset({0, 1})}
    assert result["m3"] == {B: frozenset({2})}


def test_range_orders_static_members_by_instance_id() -> None:
    members = {"zz": MemberSpec(frozenset({A}), instance_id="a"),
               "aa": MemberSpec(frozenset({A}), instance_id="b")}
    result = range_(members, {A: 2})
    assert result == {"zz": {A: frozenset({0})}, "aa": {A: frozenset({1})}}


topic_ids = st.sampled_from([A, B, C])


@settings(max_examples=200, deadline=None)
@given(subs=st.lists(st.frozensets(topic_ids, min_size=1), min_size=1, max_size=6),
       sizes=st.tuples(*(st.integers(0, 9) for _ in range(3))),
       homogeneous=st.booleans(), seed_previous=st.booleans())
def test_assignors_property(subs: list[frozenset[uuid.UUID]], sizes: tuple[int, int, int],
                            homogeneous: bool, seed_previous: bool) -> None:
    parts = {t: n for t, n in zip((A, B, C), sizes, strict=True) if n}
    if homogeneous:
        subs = [subs[0]] * len(subs)
    members = {f"m{i}": MemberSpec(s) for i, s in enumerate(subs)}
    if seed_previous:  # a previous (range) assignment to be sticky to
        before = range_(members, parts)
        members = {m: MemberSpec(s.topics, before[m]) for m, s in members.items()}
    for assignor in (uniform, range_):
        result = assignor(members, parts)
        check_complete(members, parts, result)
    result = uniform(members, parts)
    c = counts(result)
    if homogeneous:
        assert max(c.values()) - min(c.values()) <= 1
    for m, a in result.items():  # no partition could move to a subscriber holding 2 fewer
        for t, _p in flat(a):
            for other, spec in members.items():
                if t in spec.topics:
                    assert c[other] + 1 >= c[m]
