"""ApiVersions, derived from the registry so it always tells the truth."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.protocol.codec import RequestHeader

API_VERSIONS = 18
MIN_VERSION, MAX_VERSION = 0, 4


def api_versions_response(version: int, apis: list[Api], unsupported: bool = False) -> Any:
    """The response body; for a too-new request version, the v0 error Kafka sends
    (UNSUPPORTED_VERSION plus our ApiVersions range, so the client retries lower)."""
    mod = response_module(API_VERSIONS, version)
    listed = [a for a in apis if a.key == API_VERSIONS] if unsupported else apis
    keys = tuple(make(mod.ApiVersion, api_key=a.key, min_version=a.min_version,
                      max_version=a.max_version) for a in sorted(listed, key=lambda a: a.key))
    return make(mod.ApiVersionsResponse,
                error_code=error("unsupported_version") if unsupported else NONE,
                api_keys=keys, throttle_time=timedelta(0), supported_features=(),
                finalized_features_epoch=-1, finalized_features=(), zk_migration_ready=False)


async def handle_api_versions(ctx: Context, header: RequestHeader, req: Any) -> Any:
    registry: list[Api] = ctx.extras["apis"]
    return api_versions_response(header.api_version, registry)


APIS = [Api(API_VERSIONS, MIN_VERSION, MAX_VERSION, handle_api_versions)]
