"""`tidelog perf`: AutoMQ's perf tool, flag for flag, against any Kafka-compatible broker.

Modules: `config` (flags), `clientconf` (Java client names -> librdkafka), `topics` (names
and admin calls), `payloads` (values, keys, the `st` header, the sticky partitioner),
`ratelimit` (the shared send schedule and consume cap), `shared` (phases shared with
workers), `tally` and `histogram` (what is counted, mergeable across processes), `worker`
and `pool` (the processes), `runner` (the phases), `report` and `chart` (the output).
This package talks to brokers only through the Kafka protocol: it imports nothing else
from tidelog.
"""
