"""Userspace proxies that put real faults between broker processes and their services,
on 127.0.0.1 only: an S3 proxy in front of moto that answers 503 SlowDown storms, adds
latency, or runs a hook once a PUT has landed (to kill the broker before it hears back),
and a TCP proxy in front of PostgreSQL that stalls every connection, as a network cut
that heals does (bytes in flight wait, then flow on; nothing is refused)."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.integration.link_proxy import LinkProxy

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection",
                  "te", "trailer", "upgrade", "content-length"})

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class S3FaultProxy:
    """An HTTP reverse proxy to `upstream` (moto's endpoint). Settings take effect on the
    next request: `fail_rate` (share of requests of `fail_methods` answered 503 SlowDown),
    `latency` (seconds added before forwarding), `after_put` (called with the path once a
    PUT was stored upstream, before the answer is sent). `puts_started - puts_answered`
    is the number of PUTs in flight."""

    def __init__(self, upstream: str, seed: int = 7) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fail_rate = 0.0
        self.fail_methods: frozenset[str] = frozenset({"PUT", "GET", "POST", "DELETE", "HEAD"})
        self.latency = 0.0
        self.after_put: Callable[[str], None] | None = None
        self.requests = 0
        self.failed = 0
        self.puts_started = 0
        self.puts_answered = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def heal(self) -> None:
        self.fail_rate, self.latency, self.after_put = 0.0, 0.0, None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        with self._lock:
            self.requests += 1
            self.puts_started += h.command == "PUT"
            fail = h.command in self.fail_methods and self._random.random() < self.fail_rate
            if fail:
                self.failed += 1
        if self.latency:
            time.sleep(self.latency)
        if fail:
            _answer(h, 503, [("Content-Type", "application/xml")], SLOW_DOWN)
            with self._lock:
                self.puts_answered += h.command == "PUT"
            return
        status, headers, data = self._forward(h, body)
        hook = self.after_put
        if h.command == "PUT" and 200 <= status < 300 and hook is not None:
            hook(h.path)
        _answer(h, status, headers, data)
        with self._lock:
            self.puts_answered += h.command == "PUT"

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        for attempt in (1, 2):  # a pooled connection moto closed is reopened once
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(*self.upstream,
                                                                     timeout=60)
            try:
                conn.request(h.command, h.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            return resp.status, kept, data
        raise AssertionError("unreachable")


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


def _answer(h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
            data: bytes) -> None:
    try:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
    except OSError:
        h.close_connection = True  # the broker is gone (killed by a hook)


class TcpStallProxy(LinkProxy):
    """A TCP proxy to 127.0.0.1:`upstream_port`. `stall()` holds every byte in both
    directions (new connections are accepted and held too) until `flow()`."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), ("127.0.0.1", upstream_port))
        self.upstream_port = upstream_port

    @property
    def port(self) -> int:
        return self.address[1]
