"""`tidelog cost`: how big a cluster, which WAL, and what it costs per month, for 3-AZ
Apache Kafka, diskless with an S3 WAL and diskless with an FSx WAL; or what a real run
cost, from its brokers' counters. Model: `sizing` (AKU, FSx, brokers), `model` (cost
lines), `measured` (a run); prices and assumptions in `prices`; see docs/cost.md."""
