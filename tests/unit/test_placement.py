"""Placement of new partitions: spread over every broker, the less loaded first, racks
interleaved, ties by id."""

from __future__ import annotations

from collections import Counter

import pytest

from tidelog.controller.placement import Candidate, place


def test_even_over_brokers_and_racks() -> None:
    brokers = [Candidate(1, "a"), Candidate(2, "b"), Candidate(3, "c")]
    assert place(12, brokers, {}) == [1, 2, 3] * 4


def test_spreads_every_topic_and_gives_the_remainder_to_the_less_loaded() -> None:
    brokers = [Candidate(1, "a"), Candidate(2, "b"), Candidate(3, "c")]
    owners = place(6, brokers, {1: 5, 2: 1})
    assert Counter(owners) == {1: 2, 2: 2, 3: 2}  # every broker leads some of the topic
    assert owners[:3] == [3, 2, 1]  # the less loaded first
    assert Counter(place(4, brokers, {1: 5, 2: 1})) == {3: 2, 2: 1, 1: 1}


def test_unbalanced_zones_still_spread() -> None:
    brokers = [Candidate(1, "a"), Candidate(2, "a"), Candidate(3, "b")]
    owners = place(3, brokers, {})
    assert owners == [1, 3, 2]  # the second partition goes to the other zone
    racks = Counter({1: "a", 2: "a", 3: "b"}[o] for o in place(30, brokers, {}))
    assert racks == {"a": 20, "b": 10}  # every broker gets its share


def test_no_broker() -> None:
    with pytest.raises(ValueError):
        place(1, [], {})
