"""From a request frame to a response frame: version check, decode, handle, encode."""

from __future__ import annotations

import logging

from tidelog.api.api_versions import API_VERSIONS, api_versions_response
from tidelog.api.base import Context, Encoded
from tidelog.api.produce import NO_RESPONSE, PRODUCE
from tidelog.api.registry import ALL, BY_KEY, PRIVATE
from tidelog.api.traffic import produce_data_bytes, traffic
from tidelog.protocol.codec import (
    PRIVATE_API_KEYS,
    FrameError,
    decode_request,
    encode_private_response,
    encode_response,
    peek_header,
    private_request,
)
from tidelog.zone.connection import ClientConnection, learn

log = logging.getLogger(__name__)


class ProtocolViolation(Exception):
    """The peer sent something no Kafka client sends: the connection is closed."""


class Dispatcher:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        ctx.extras["apis"] = ALL
        self.by_api: dict[int, int] = {}
        self.traffic = traffic(ctx)

    async def __call__(
        self, frame: bytes, conn: ClientConnection | None = None
    ) -> bytes | list[bytes | bytearray | memoryview] | None:
        head = peek_header(frame)
        if head.api_key in PRIVATE_API_KEYS:
            return await self._private(frame, conn or ClientConnection())
        api = BY_KEY.get(head.api_key)
        if api is None:
            raise ProtocolViolation(f"unknown api key {head.api_key}")
        version = head.api_version
        if not api.min_version <= version <= api.max_version:
            if head.api_key == API_VERSIONS:
                body = api_versions_response(0, ALL, unsupported=True)
                return encode_response(API_VERSIONS, 0, head.correlation_id, body)
            raise ProtocolViolation(
                f"api key {head.api_key} version {version} not supported "
                f"({api.min_version}-{api.max_version})")
        try:
            header, req = decode_request(frame)
        except Exception as exc:
            raise ProtocolViolation(
                f"malformed request (api key {head.api_key} v{version}): {exc!r}") from exc
        self.by_api[head.api_key] = self.by_api.get(head.api_key, 0) + 1
        if conn is None:
            conn = ClientConnection()
        if conn.zone is None or not conn.named:
            learn(conn, header.client_id, getattr(req, "rack_id", None), self._broker_zone)
        zone = conn.zone or self.traffic.zone
        kind = "client" if conn.peer_broker is None else "broker"
        self.traffic.from_client(zone, len(frame) + 4,
                                 produce_data_bytes(req) if head.api_key == PRODUCE else 0,
                                 kind)
        header.client_host, header.listener, header.zone = conn.peer_host, conn.listener, conn.zone
        resp = await api.handler(self.ctx, header, req)
        if resp is NO_RESPONSE:
            return None
        if isinstance(resp, Encoded):  # Fetch: it counted its own bytes, only it knows the data
            return resp.buffers
        out = encode_response(head.api_key, version, head.correlation_id, resp)
        self.traffic.to_client(zone, len(out), 0, kind)
        return out

    async def _private(self, frame: bytes, conn: ClientConnection) -> bytes:
        """A Tidelog inter-broker request: served only to another broker (what its
        client.id says; issue 23 makes that its principal)."""
        try:
            header, body = private_request(frame)
        except FrameError as exc:
            raise ProtocolViolation(f"malformed private request: {exc}") from exc
        if conn.zone is None or not conn.named:
            learn(conn, header.client_id, None, self._broker_zone)
        api = PRIVATE.get(header.api_key)
        if conn.peer_broker is None or api is None or header.api_version != 0:
            why = "not a broker" if conn.peer_broker is None else "unknown"
            raise ProtocolViolation(f"private api key {header.api_key} "
                                    f"v{header.api_version} from {header.client_id!r}: {why}")
        self.by_api[header.api_key] = self.by_api.get(header.api_key, 0) + 1
        zone = conn.zone or self.traffic.zone
        self.traffic.from_client(zone, len(frame) + 4, 0, "broker")
        header.client_host, header.listener, header.zone = conn.peer_host, conn.listener, zone
        try:
            answer = await api(self.ctx, header, body)
        except ValueError as exc:  # the body does not parse
            raise ProtocolViolation(f"private api key {header.api_key}: {exc}") from exc
        out = encode_private_response(header.correlation_id, answer)
        self.traffic.to_client(zone, len(out), 0, "broker")
        return out

    def _broker_zone(self, node: int) -> str | None:
        b = self.ctx.broker_by_id(node)
        return (b.rack or None) if b is not None else None
