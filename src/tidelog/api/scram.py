"""DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554).

Credentials are stored for the SASL/SCRAM listener to come; today's PLAINTEXT listener
authenticates nobody. Describing needs DESCRIBE on the cluster, altering ALTER."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tidelog.api.acl_model import CLUSTER_NAME, Operation, ResourceType
from tidelog.api.base import NONE, Api, Context, error, make, response_module
from tidelog.api.scram_store import Credential, CredentialError, ScramStore, derive
from tidelog.protocol.codec import RequestHeader

log = logging.getLogger(__name__)
DESCRIBE_USER_SCRAM_CREDENTIALS, ALTER_USER_SCRAM_CREDENTIALS = 50, 51


def _store(ctx: Context) -> ScramStore:
    return ScramStore(ctx.topics.meta)


async def handle_describe(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(DESCRIBE_USER_SCRAM_CREDENTIALS, header.api_version)

    def answer(code: str | None, msg: str | None, results: tuple[Any, ...] = ()) -> Any:
        return make(mod.DescribeUserScramCredentialsResponse, throttle_time=timedelta(0),
                    error_code=error(code) if code else NONE, error_message=msg,
                    results=results)

    if not ctx.allowed(header, Operation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return answer("cluster_authorization_failed", "DESCRIBE on the cluster is not allowed")
    known = await _store(ctx).users()
    asked = [u.name for u in req.users] if req.users else sorted(known)
    results = []
    for user in dict.fromkeys(asked):
        code, msg, creds = NONE, None, known.get(user, [])
        if asked.count(user) > 1:
            code = error("duplicate_resource")
            msg, creds = f"cannot describe SCRAM credentials of {user!r} twice", []
        elif not creds:
            code = error("resource_not_found")
            msg = f"Attempt to describe a user credential that does not exist: {user}"
        results.append(make(mod.DescribeUserScramCredentialsResult, user=user, error_code=code,
                            error_message=msg, credential_infos=tuple(
                                make(mod.CredentialInfo, mechanism=c.mechanism,
                                     iterations=c.iterations)
                                for c in sorted(creds, key=lambda c: c.mechanism))))
    return answer(None, None, tuple(results))


async def handle_alter(ctx: Context, header: RequestHeader, req: Any) -> Any:
    mod = response_module(ALTER_USER_SCRAM_CREDENTIALS, header.api_version)
    changes = [(d.name, d.mechanism, None) for d in req.deletions] + [
        (u.name, u.mechanism, u) for u in req.upsertions]
    users = list(dict.fromkeys(name for name, _, _ in changes))
    failed: dict[str, tuple[str, str]] = {}
    if not ctx.allowed(header, Operation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        failed = {u: ("cluster_authorization_failed", "ALTER on the cluster is not allowed")
                  for u in users}
    pairs = [(name, mech) for name, mech, _ in changes]
    store = _store(ctx)
    # Validate everything first: a user's changes apply only if all of them are valid.
    plan: list[tuple[str, int, Credential | None]] = []
    for name, mech, up in changes:
        if name in failed:
            continue
        try:
            if not name:
                raise CredentialError("unacceptable_credential", "Username must not be empty")
            if pairs.count((name, mech)) > 1:
                raise CredentialError("duplicate_resource", "A user credential cannot be "
                                      "altered twice in the same request")
            if up is None:
                if not await store.exists(name, mech):
                    raise CredentialError("resource_not_found", "Attempt to delete a user "
                                          "credential that does not exist")
                plan.append((name, mech, None))
            else:
                plan.append((name, mech, derive(mech, up.iterations, up.salt,
                                                up.salted_password)))
        except CredentialError as exc:
            failed[name] = (exc.code, str(exc))
    for name, mech, cred in plan:
        if name in failed:
            continue
        if cred is None:
            await store.delete(name, mech)
        else:
            await store.put(name, cred)
        log.info("SCRAM credential %s for %r (mechanism %d)",
                 "deleted" if cred is None else "set", name, mech)
    return make(mod.AlterUserScramCredentialsResponse, throttle_time=timedelta(0),
                results=tuple(
                    make(mod.AlterUserScramCredentialsResult, user=u,
                         error_code=error(failed[u][0]) if u in failed else NONE,
                         error_message=failed[u][1] if u in failed else None)
                    for u in users))


APIS = [
    Api(DESCRIBE_USER_SCRAM_CREDENTIALS, 0, 0, handle_describe),
    Api(ALTER_USER_SCRAM_CREDENTIALS, 0, 0, handle_alter),
]
