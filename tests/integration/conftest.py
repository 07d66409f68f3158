from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.broker import BrokerProcess


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[type[BrokerProcess]]:
    started: list[BrokerProcess] = []

    class Factory(BrokerProcess):
        def __init__(self, settings: dict[str, str] | None = None,
                     data_dir: Path | None = None) -> None:
            super().__init__(data_dir or tmp_path / f"broker{len(started)}", settings)
            started.append(self)

    yield Factory
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory: type[BrokerProcess]) -> BrokerProcess:
    return broker_factory().start()
