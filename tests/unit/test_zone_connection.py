"""The zone of a connection: listener, source address, client.id token, client.rack."""

from __future__ import annotations

import pytest

from tidelog.config import ConfigError, Listener, parse_listeners
from tidelog.server import _advertised
from tidelog.zone.connection import ZoneRules, learn, zone_in_client_id


def test_a_listener_names_its_zone_before_the_address_does() -> None:
    rules = ZoneRules.parse("ZB:b", "c@127.0.3.0/24")
    conn = rules.connection("ZB", "127.0.3.7")
    assert (conn.zone, conn.how, conn.peer_host) == ("b", "listener", "/127.0.3.7")
    conn = rules.connection("PLAINTEXT", "127.0.3.7")
    assert (conn.zone, conn.how) == ("c", "cidr")
    learn(conn, "tidelog_az=a", "r")  # known already: kept
    assert conn.zone == "c"


def test_the_most_specific_block_wins_and_ipv6_works() -> None:
    rules = ZoneRules.parse("", "a@10.0.0.0/16, b@10.0.16.0/20,v6@fd00::/8")
    assert rules.connection("PLAINTEXT", "10.0.17.1").zone == "b"
    assert rules.connection("PLAINTEXT", "10.0.1.1").zone == "a"
    assert rules.connection("PLAINTEXT", "fd00::1").zone == "v6"
    other = rules.connection("PLAINTEXT", "192.168.1.1")
    assert (other.zone, other.how) == (None, "none")


@pytest.mark.parametrize("client_id, zone", [
    ("tidelog_az=a", "a"),
    ("orders-service,automq_az=us-east-1a", "us-east-1a"),
    ("ws_az=b;ws_host_override=x", "b"),
    ("app diskless_az=c", "c"),
    ("automq_type=producer&automq_az=d", "d"),
    ("TIDELOG_AZ=e", "e"),
    ("rdkafka", None),
    ("my_az=f", None),
    ("tidelog_az=", None),
    (None, None),
])
def test_zone_tokens_in_client_id(client_id: str | None, zone: str | None) -> None:
    assert zone_in_client_id(client_id) == zone


def test_client_id_first_then_the_rack() -> None:
    rules = ZoneRules()
    conn = rules.connection("PLAINTEXT", "127.0.0.1")
    learn(conn, "rdkafka", None)
    assert conn.zone is None
    learn(conn, "rdkafka", "r1")
    assert (conn.zone, conn.how) == ("r1", "rack")
    conn = rules.connection("PLAINTEXT", "127.0.0.1")
    learn(conn, "x,tidelog_az=z", "r1")
    assert (conn.zone, conn.how) == ("z", "client_id")


@pytest.mark.parametrize("value", ["ZB", "ZB:", ":b"])
def test_bad_listener_zones_are_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        ZoneRules.parse(value, "")


@pytest.mark.parametrize("value", ["10.0.0.0/8", "a@10.0.0.300/8", "@10.0.0.0/8"])
def test_bad_cidr_blocks_are_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        ZoneRules.parse("", value)


def test_listeners_in_kafkas_list_form() -> None:
    assert parse_listeners("PLAINTEXT://127.0.0.1:9092, zb://127.0.2.1:9093,ZV6://[::1]:0") == [
        Listener("127.0.0.1", 9092, "PLAINTEXT"), Listener("127.0.2.1", 9093, "ZB"),
        Listener("::1", 0, "ZV6")]
    assert parse_listeners(":9092") == [Listener("0.0.0.0", 9092)]
    with pytest.raises(ConfigError):  # two unnamed ones are both PLAINTEXT
        parse_listeners("127.0.0.1:9092,127.0.0.1:9093")
    with pytest.raises(ConfigError):
        parse_listeners("PLAINTEXT://127.0.0.1")
    with pytest.raises(ConfigError):
        parse_listeners(" , ")


def test_advertised_listeners_match_by_name_else_by_position() -> None:
    binds = parse_listeners("PLAINTEXT://0.0.0.0:9092,ZB://0.0.0.0:9093")
    assert _advertised(binds, "") == binds
    assert _advertised(binds, "ZB://b.example:9093") == [
        binds[0], Listener("b.example", 9093, "ZB")]
    assert _advertised(binds[:1], "EXTERNAL://x.example:19092") == [
        Listener("x.example", 19092, "PLAINTEXT")]


def test_a_broker_peer_is_told_by_its_client_id_and_put_in_its_zone() -> None:
    rules = ZoneRules.parse("ZB:b", "")
    conn = rules.connection("ZB", "127.0.2.1")
    learn(conn, "tidelog-broker-3", None, {3: "c"}.get)
    assert (conn.zone, conn.how, conn.peer_broker) == ("c", "broker", 3)
    later = rules.connection("PLAINTEXT", "127.0.0.1")
    learn(later, "rdkafka", None, {3: "c"}.get)
    learn(later, "tidelog-broker-3", None, {3: "c"}.get)  # only the first request names it
    assert (later.zone, later.peer_broker) == (None, None)
