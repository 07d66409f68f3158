"""Build an `ObjectStore` from `objectstore.uri`.

    file://./data/objects          relative to the working directory (created if missing)
    file:///abs/path               absolute directory (created if missing)
    memory://                      a fresh in-process store (tests)
    s3://bucket/prefix?endpoint=http://127.0.0.1:5000&region=us-east-1&access_key_id=...
    gs://bucket/prefix
    az://container/prefix?account_name=...

Options come from the query string and from keyword arguments (which win). Besides obstore's
store settings (`S3Config`, `GCSConfig`, `AzureConfig` keys, e.g. `endpoint`, `region`) and
HTTP client settings (`allow_http`, `timeout`, ...), three are ours: `attempts` (outer retry
loop), `max_retries` and `retry_timeout` (seconds; obstore's HTTP retries). Cloud stores also
read their usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`). A path after the
bucket is a key prefix applied to every key.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from obstore.exceptions import BaseError
from obstore.store import AzureStore, GCSStore, LocalStore, MemoryStore, S3Store

from tidelog.objectstore.base import ObjectStore
from tidelog.objectstore.obstore_store import ObstoreObjectStore

if TYPE_CHECKING:
    from obstore.store import (
        AzureConfig,
        ClientConfig,
        GCSConfig,
        RetryConfig,
        S3Config,
    )
    from obstore.store import ObjectStore as Backend

# obstore's ClientConfig keys; every other option is a store setting.
_CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "root_certificate",
        "timeout",
        "user_agent",
    }
)

_AWS_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")

DEFAULT_ATTEMPTS = 3
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_TIMEOUT_S = 30.0


def open_object_store(uri: str, **options: str) -> ObjectStore:
    """Open the store named by `uri`; raises `ValueError` for a malformed URI or option."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    opts = dict(parse_qsl(parts.query, keep_blank_values=True))
    opts.update(options)
    # The description leaves out the query string, which may hold secrets.
    name = f"{scheme}://{parts.netloc}{parts.path}"
    attempts = _int_option(opts.pop("attempts", str(DEFAULT_ATTEMPTS)), "attempts", name)
    retry = _retry_config(opts, name)

    backend: Backend
    if scheme == "file":
        _reject_options(opts, name)
        backend = LocalStore(_local_dir(parts.netloc, parts.path))
    elif scheme == "memory":
        _reject_options(opts, name)
        if parts.netloc or parts.path.strip("/"):
            raise ValueError(f"{name}: memory:// takes no bucket or prefix")
        backend = MemoryStore()
    elif scheme in ("s3", "gs", "az"):
        backend = _cloud_store(scheme, parts.netloc, parts.path, opts, retry, name)
    else:
        raise ValueError(f"{name}: unsupported object store scheme {scheme!r}")
    return ObstoreObjectStore(backend, name=name, attempts=attempts)


def _local_dir(netloc: str, path: str) -> Path:
    """`file://./x` parses with netloc '.', so a netloc other than localhost is path text."""
    text = unquote(path if netloc in ("", "localhost") else netloc + path)
    if not text:
        raise ValueError("file:// needs a directory")
    directory = Path(text).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _cloud_store(
    scheme: str, bucket: str, path: str, opts: dict[str, str], retry: RetryConfig, name: str
) -> Backend:
    if not bucket:
        raise ValueError(f"{name}: missing bucket or container")
    prefix = unquote(path).strip("/") or None
    client = {k: v for k, v in opts.items() if k in _CLIENT_KEYS}
    config = {k: v for k, v in opts.items() if k not in _CLIENT_KEYS}
    if scheme == "s3":
        _allow_plain_http(config, client)
    client_options = cast("ClientConfig", client)
    try:
        if scheme == "s3":
            return S3Store(
                bucket,
                prefix=prefix,
                config=cast("S3Config", config),
                client_options=client_options,
                retry_config=retry,
            )
        if scheme == "gs":
            return GCSStore(
                bucket,
                prefix=prefix,
                config=cast("GCSConfig", config),
                client_options=client_options,
                retry_config=retry,
            )
        return AzureStore(
            bucket,
            prefix=prefix,
            config=cast("AzureConfig", config),
            client_options=client_options,
            retry_config=retry,
        )
    except (BaseError, ValueError) as e:
        raise ValueError(f"{name}: {str(e).splitlines()[0]}") from e


def _allow_plain_http(config: dict[str, str], client: dict[str, str]) -> None:
    """Let a plain-http S3 endpoint (MinIO, moto, LocalStack) be used without more options.

    obstore reads `AWS_*` store settings from the environment but not client settings such
    as `AWS_ALLOW_HTTP`, so that one is read here.
    """
    if "allow_http" in client:
        return
    if allow := os.environ.get("AWS_ALLOW_HTTP"):
        client["allow_http"] = allow
        return
    endpoint = config.get("endpoint") or next(
        (os.environ[k] for k in _AWS_ENDPOINT_ENV if os.environ.get(k)), ""
    )
    if endpoint.startswith("http://"):
        client["allow_http"] = "true"


def _retry_config(opts: dict[str, str], name: str) -> RetryConfig:
    max_retries = _int_option(
        opts.pop("max_retries", str(DEFAULT_MAX_RETRIES)), "max_retries", name
    )
    timeout = _float_option(
        opts.pop("retry_timeout", str(DEFAULT_RETRY_TIMEOUT_S)), "retry_timeout", name
    )
    return {
        "max_retries": max_retries,
        "retry_timeout": timedelta(seconds=timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=50),
            "max_backoff": timedelta(seconds=2),
        },
    }


def _reject_options(opts: dict[str, str], name: str) -> None:
    if opts:
        raise ValueError(f"{name}: unknown options {sorted(opts)}")


def _int_option(value: str, key: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: {key} must be an integer, got {value!r}") from None


def _float_option(value: str, key: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}: {key} must be a number, got {value!r}") from None
