"""Shared fixtures."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest

if TYPE_CHECKING:
    from tidelog.tools.local_postgres import LocalPostgres


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[dict[str, Any]]:
    """An in-process S3 (moto server on a free port) with one empty bucket.

    Yields `endpoint`, `bucket`, `region`, `access_key_id`, `secret_access_key`,
    `options` (keyword options for `open_object_store`) and `uri` (`s3://bucket?...`).
    The bucket is shared by the session: give each test its own key prefix.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "endpoint": f"http://{host}:{port}",
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "allow_http": "true",
    }
    bucket = "tidelog-test"
    boto3.client(
        "s3",
        endpoint_url=options["endpoint"],
        region_name=options["region"],
        aws_access_key_id=options["access_key_id"],
        aws_secret_access_key=options["secret_access_key"],
    ).create_bucket(Bucket=bucket)
    try:
        yield {
            **options,
            "bucket": bucket,
            "options": options,
            "uri": f"s3://{bucket}?{urlencode(options)}",
        }
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (local cluster in a fresh temp directory) for the session.

    Its `dsn` reaches the `tidelog` database as the `tidelog` user over TCP on 127.0.0.1.
    Shared by the session: tests that need isolation take `pg_database` instead.
    """
    from tidelog.tools.local_postgres import start, stop

    data_dir = tmp_path_factory.mktemp("postgres")
    try:
        yield start(data_dir)
    finally:
        stop(data_dir)  # also when start failed half-way: the server may be up


@pytest.fixture
def pg_database(postgres: LocalPostgres) -> Iterator[str]:
    """The dsn of a fresh, empty database of `postgres`, owned by its user, dropped afterwards
    (forcefully: a test that leaks a connection must not break the next one)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_database(name)
    try:
        yield dsn
    finally:
        postgres.drop_database(name)
