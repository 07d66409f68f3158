"""SCRAM credentials (KIP-554), kept in cluster metadata as Kafka keeps them: per user and
mechanism the salt, the iteration count, StoredKey and ServerKey (RFC 5802), derived from
the salted password the admin client sends; the password itself is never stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

from tidelog.metadata.base import MetadataStore

SCRAM = "scram/"
MECHANISMS = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
_HASH = {1: hashlib.sha256, 2: hashlib.sha512}
MIN_ITERATIONS, MAX_ITERATIONS = 4096, 16384


class CredentialError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Credential:
    mechanism: int
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def derive(mechanism: int, iterations: int, salt: bytes, salted_password: bytes) -> Credential:
    """Check an upsertion as Kafka does and derive what a SCRAM server needs."""
    if mechanism not in MECHANISMS:
        raise CredentialError("unsupported_sasl_mechanism",
                              f"unknown SCRAM mechanism {mechanism}")
    if iterations < MIN_ITERATIONS:
        raise CredentialError("unacceptable_credential",
                              f"too few iterations: {iterations} (at least {MIN_ITERATIONS})")
    if iterations > MAX_ITERATIONS:
        raise CredentialError("unacceptable_credential",
                              f"too many iterations: {iterations} (at most {MAX_ITERATIONS})")
    if not salt or not salted_password:
        raise CredentialError("unacceptable_credential", "salt and password must be given")
    h = _HASH[mechanism]
    client_key = hmac.new(salted_password, b"Client Key", h).digest()
    return Credential(mechanism, iterations, salt, h(client_key).digest(),
                      hmac.new(salted_password, b"Server Key", h).digest())


def _key(user: str, mechanism: int) -> str:
    return f"{SCRAM}{user}/{mechanism}"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class ScramStore:
    def __init__(self, meta: MetadataStore) -> None:
        self._meta = meta

    async def users(self) -> dict[str, list[Credential]]:
        out: dict[str, list[Credential]] = {}
        for e in await self._meta.list(SCRAM):
            user, _, _ = e.key[len(SCRAM):].rpartition("/")
            d = json.loads(e.value)
            out.setdefault(user, []).append(Credential(
                int(d["mechanism"]), int(d["iterations"]), base64.b64decode(d["salt"]),
                base64.b64decode(d["stored_key"]), base64.b64decode(d["server_key"])))
        return out

    async def exists(self, user: str, mechanism: int) -> bool:
        return await self._meta.get(_key(user, mechanism)) is not None

    async def put(self, user: str, cred: Credential) -> None:
        await self._meta.put(_key(user, cred.mechanism), json.dumps({
            "mechanism": cred.mechanism, "iterations": cred.iterations,
            "salt": _b64(cred.salt), "stored_key": _b64(cred.stored_key),
            "server_key": _b64(cred.server_key)}).encode())

    async def delete(self, user: str, mechanism: int) -> None:
        await self._meta.delete(_key(user, mechanism))
