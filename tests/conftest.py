"""Shared fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest


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
