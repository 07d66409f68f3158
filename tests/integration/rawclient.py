"""A minimal Kafka wire client for tests that must send what no real client sends."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_response_schema
from kio.serial import entity_reader, entity_writer


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, request: Any, client_id: str = "raw") -> bytes:
        self.correlation += 1
        header_cls = request.__header_schema__
        fields = {"request_api_key": request.__api_key__,
                  "request_api_version": request.__version__,
                  "correlation_id": self.correlation, "client_id": client_id}
        buf = io.BytesIO()
        entity_writer(header_cls)(buf, header_cls(**fields))
        entity_writer(type(request))(buf, request)
        body = buf.getvalue()
        return struct.pack(">i", len(body)) + body

    def request(self, request: Any) -> Any:
        self.send_raw(self.frame(request))
        return self.read_response(request.__api_key__, request.__version__)

    def read_frame(self) -> bytes:
        size = struct.unpack(">i", self._read(4))[0]
        return self._read(size)

    def read_response(self, api_key: int, version: int) -> Any:
        data = self.read_frame()
        schema = load_response_schema(api_key, version)
        offset = 4  # correlation id
        if schema.__flexible__ and api_key != 18:
            offset += 1  # empty tagged fields
        body, _ = entity_reader(schema)(data, offset)
        return body

    def is_closed(self) -> bool:
        """True when the broker closed the connection (EOF or reset)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by broker")
            out += chunk
        return bytes(out)
