"""A small blocking Kafka client for the command-line tools.

Tools talk to a broker the way any user does, over the Kafka protocol, so they never
import the broker's internals; kio supplies the message schemas.
"""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_response_schema
from kio.serial import entity_reader, entity_writer

API_VERSIONS = 18


class KafkaWireClient:
    def __init__(self, bootstrap: str, timeout: float = 30.0,
                 client_id: str = "tidelog-cli") -> None:
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        self._sock = socket.create_connection((host or "localhost", int(port)), timeout=timeout)
        self._corr = 0
        self._client_id = client_id

    def __enter__(self) -> KafkaWireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, req: Any) -> Any:
        self._corr += 1
        header_cls = req.__header_schema__
        buf = io.BytesIO()
        entity_writer(header_cls)(buf, header_cls(
            request_api_key=req.__api_key__, request_api_version=req.__version__,
            correlation_id=self._corr, client_id=self._client_id))
        entity_writer(type(req))(buf, req)
        body = buf.getvalue()
        self._sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", self._read(4))
        data = self._read(size)
        schema = load_response_schema(req.__api_key__, req.__version__)
        offset = 4 + (1 if schema.__flexible__ and req.__api_key__ != API_VERSIONS else 0)
        resp, _ = entity_reader(schema)(data, offset)
        return resp

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            out += chunk
        return bytes(out)
