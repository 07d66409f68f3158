"""A producer load for failure tests: numbered records to every partition, each
acknowledgement and failure recorded with its time."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer


class Load:
    """An idempotent acks=all producer of numbered records to every partition, recording
    when each acknowledgement arrived."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 12,
                 **conf: object) -> None:
        self.topic = topic
        self.partitions = partitions
        self.conf = conf
        self.acked: list[tuple[int, int, float]] = []  # (partition, number, when)
        self.sent_at: dict[int, float] = {}  # number -> when produce() was called
        self.failed: list[tuple[int, int, str]] = []  # (partition, number, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bootstrap,))
        self._thread.start()

    def _run(self, bootstrap: str) -> None:
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all",
                      "enable.idempotence": True, "message.timeout.ms": 120_000,
                      **self.conf})
        n = 0

        def done(err: object, m: object) -> None:
            part, number = m.partition(), int(m.value().split(b"-")[1])  # type: ignore[attr-defined]
            if err is None:
                self.acked.append((part, number, time.monotonic()))
            else:
                self.failed.append((part, number, str(err)))

        while not self._stop.is_set():
            self.sent_at[n] = time.monotonic()
            try:
                p.produce(self.topic, value=f"{n % self.partitions}-{n}".encode(),
                          partition=n % self.partitions, on_delivery=done)
            except BufferError:  # a partition waits for its new leader: let it drain
                p.poll(0.05)
                continue
            n += 1
            if n % 50 == 0:
                p.poll(0.01)
        assert p.flush(120) == 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(150)
