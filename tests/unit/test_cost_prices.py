"""The price table is documented and versioned, and a JSON or TOML file overrides it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from tidelog.tools.cost.prices import (
    SOURCES,
    Assumptions,
    CostInputError,
    Prices,
    load_overrides,
    parse_overrides,
)


def test_every_price_has_a_source() -> None:
    meta = {"version", "region", "as_of", "currency", "month_hours"}
    priced = {f.name for f in fields(Prices)} - meta
    assert priced == set(SOURCES)
    assert all(s.url.startswith("https://") and s.status in ("list", "derived")
               for s in SOURCES.values())
    assert Prices().version and Prices().as_of


def test_json_override(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"prices": {"version": "mine-1", "s3_put_per_1000": 0.0054},'
                    ' "assumptions": {"aku_per_instance": 4, "kafka_follower_fetching": false,'
                    ' "fsx_sizes": [[3072, 1200], [384, 150]]}}')
    p, a = load_overrides(path)
    assert (p.version, p.s3_put_per_1000, p.s3_get_per_1000) == ("mine-1", 0.0054, 0.0004)
    assert a.aku_per_instance == 4 and a.kafka_follower_fetching is False
    assert a.fsx_sizes == ((384.0, 150.0), (3072.0, 1200.0))


def test_toml_override(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[prices]\nregion = "eu-west-1"\ninstance_hour = 0.7\n'
                    "[assumptions]\nupload_interval_s = 10\n")
    p, a = load_overrides(path)
    assert (p.region, p.instance_hour) == ("eu-west-1", 0.7)
    assert a.upload_interval_s == 10.0 and isinstance(a.upload_interval_s, float)
    assert p.s3_gb_month == Prices().s3_gb_month and a == Assumptions(upload_interval_s=10)


@pytest.mark.parametrize("text, message", [
    ('{"prices": {"s3_put": 1}}', "unknown prices key"),
    ('{"prices": {"s3_gb_month": "cheap"}}', "not a valid float"),
    ('{"prices": {"s3_gb_month": -1}}', "must not be negative"),
    ('{"assumptions": {"aku_per_instance": 2.5}}', "not a valid int"),
    ('{"assumptions": {"kafka_follower_fetching": 1}}', "not a valid bool"),
    ('{"discounts": {}}', "unknown section"),
    ('{"prices": 3}', "must be a table"),
    ("{not json", "not valid JSON"),
])
def test_bad_overrides_are_refused(text: str, message: str) -> None:
    with pytest.raises(CostInputError, match=message):
        parse_overrides(text, "json")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CostInputError, match="cannot read"):
        load_overrides(tmp_path / "none.toml")
