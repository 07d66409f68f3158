"""A link between two emulated zones on one machine: a TCP proxy that listens on one
loopback alias, connects upstream from another (so the broker sees a source address of
the client's zone), delays every byte by a fixed time each way, counts what it carries,
and can hold everything (`stall()` until `flow()`: a network partition). Only
127.0.0.0/8 (no netem here, and nothing may leave the machine)."""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import socket
import threading
import time


def _loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address: zones stay in 127.0.0.0/8")
    return host


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((_loopback(host), 0))
        return int(s.getsockname()[1])


class LinkProxy:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int],
                 source: str | None = None, delay: float = 0.0) -> None:
        self.upstream = (_loopback(upstream[0]), upstream[1])
        self.source = _loopback(source) if source else None
        self.delay = delay
        self.sent_up = 0
        """Bytes carried towards the upstream (client -> broker)."""
        self.sent_down = 0
        """Bytes carried back (broker -> client)."""
        self.connections = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((_loopback(listen[0]), listen[1]))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def stall(self) -> None:
        """Hold every byte, both ways, on every connection (new ones too) until `flow()`."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def stop(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(
                    self.upstream, source_address=(self.source, 0) if self.source else None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _count(self, up: bool, n: int) -> None:
        with self._lock:
            if up:
                self.sent_up += n
            else:
                self.sent_down += n

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        if self.delay <= 0:
            try:
                while data := src.recv(65536):
                    self._count(up, len(data))
                    self._flowing.wait()
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                self._close(src, dst)
            return
        held: queue.Queue[tuple[float, bytes]] = queue.Queue()
        threading.Thread(target=self._deliver, args=(held, src, dst), daemon=True).start()
        try:
            while data := src.recv(65536):
                self._count(up, len(data))
                held.put((time.monotonic() + self.delay, data))
        except OSError:
            pass
        held.put((0.0, b""))

    def _deliver(self, held: queue.Queue[tuple[float, bytes]], src: socket.socket,
                 dst: socket.socket) -> None:
        try:
            while True:
                due, data = held.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the emulated link's one-way delay
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
