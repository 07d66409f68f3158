"""CreateAcls, DescribeAcls and DeleteAcls (KIP-140): manage the authorizer's bindings.

Changing bindings needs ALTER on the cluster, listing them DESCRIBE, as in Kafka. A bad
binding or filter is refused on its own (INVALID_REQUEST with the reason); the rest of the
request still applies."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tidelog.api.acl_model import (
    CLUSTER_NAME,
    AclBinding,
    AclError,
    AclFilter,
    Operation,
    ResourceType,
    new_binding,
    new_filter,
)
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
DESCRIBE_ACLS, CREATE_ACLS, DELETE_ACLS = 29, 30, 31
DENIED = "cluster_authorization_failed"


def _cluster(ctx: Context, header: RequestHeader, op: Operation) -> bool:
    return ctx.allowed(header, op, ResourceType.CLUSTER, CLUSTER_NAME)


async def handle_create_acls(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(CREATE_ACLS, header.api_version)
    if not _cluster(ctx, header, Operation.ALTER):
        denied = make(mod.AclCreationResult, error_code=error(DENIED),
                      error_message="ALTER on the cluster is not allowed")
        return make(mod.CreateAclsResponse, throttle_time=timedelta(0),
                    results=(denied,) * len(req.creations))
    outcome: list[tuple[Any, str | None]] = []
    valid: list[AclBinding] = []
    for c in req.creations:
        try:
            b = new_binding(c.resource_type, c.resource_name, c.resource_pattern_type,
                            c.principal, c.host, c.operation, c.permission_type)
        except AclError as exc:
            log.info("CreateAcls refused a binding: %s", exc)
            outcome.append((error("invalid_request"), str(exc)))
            continue
        valid.append(b)
        outcome.append((NONE, None))
    await ctx.authorizer.create(valid)
    return make(mod.CreateAclsResponse, throttle_time=timedelta(0), results=tuple(
        make(mod.AclCreationResult, error_code=code, error_message=msg)
        for code, msg in outcome))


def _filter(f: Any) -> AclFilter:
    return new_filter(f.resource_type_filter, f.resource_name_filter,
                      f.pattern_type_filter, f.principal_filter, f.host_filter, f.operation,
                      f.permission_type)


async def handle_describe_acls(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_ACLS, header.api_version)

    def answer(code: str | None, msg: str | None, resources: tuple[Any, ...] = ()) -> Any:
        return make(mod.DescribeAclsResponse, throttle_time=timedelta(0),
                    error_code=error(code) if code else NONE, error_message=msg,
                    resources=resources)

    if not _cluster(ctx, header, Operation.DESCRIBE):
        return answer(DENIED, "DESCRIBE on the cluster is not allowed")
    try:
        found = ctx.authorizer.describe(_filter(req))
    except AclError as exc:
        return answer("invalid_request", str(exc))
    by_resource: dict[tuple[int, str, int], list[AclBinding]] = {}
    for b in found:
        by_resource.setdefault((b.resource_type, b.name, b.pattern), []).append(b)
    return answer(None, None, tuple(
        make(mod.DescribeAclsResource, resource_type=rt, resource_name=name, pattern_type=pt,
             acls=tuple(make(mod.AclDescription, principal=b.principal, host=b.host,
                             operation=b.operation, permission_type=b.permission)
                        for b in group))
        for (rt, name, pt), group in by_resource.items()))


async def handle_delete_acls(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DELETE_ACLS, header.api_version)

    def result(code: str | None, msg: str | None, acls: list[AclBinding]) -> Any:
        return make(mod.DeleteAclsFilterResult, error_code=error(code) if code else NONE,
                    error_message=msg, matching_acls=tuple(
                        make(mod.DeleteAclsMatchingAcl, error_code=NONE, error_message=None,
                             resource_type=b.resource_type, resource_name=b.name,
                             pattern_type=b.pattern, principal=b.principal, host=b.host,
                             operation=b.operation, permission_type=b.permission)
                        for b in acls))

    if not _cluster(ctx, header, Operation.ALTER):
        return make(mod.DeleteAclsResponse, throttle_time=timedelta(0), filter_results=tuple(
            result(DENIED, "ALTER on the cluster is not allowed", []) for _ in req.filters))
    parsed: list[AclFilter | AclError] = []
    for f in req.filters:
        try:
            parsed.append(_filter(f))
        except AclError as exc:
            parsed.append(exc)
    matched = iter(await ctx.authorizer.delete([f for f in parsed if isinstance(f, AclFilter)]))
    return make(mod.DeleteAclsResponse, throttle_time=timedelta(0), filter_results=tuple(
        result("invalid_request", str(f), []) if isinstance(f, AclError)
        else result(None, None, next(matched)) for f in parsed))


APIS = [
    Api(DESCRIBE_ACLS, 1, 3, handle_describe_acls),
    Api(CREATE_ACLS, 1, 3, handle_create_acls),
    Api(DELETE_ACLS, 1, 3, handle_delete_acls),
]
