"""Benchmarks and experiments beside the stages: decoder speed per artifact (``bench.decoders``, ``make
bench``), serving latency and throughput against the framework's floor (``bench.serving``, ``make serve-bench``)
and where serving time goes (``bench.serving_breakdown``, an experiment behind docs/serving-performance.md)."""
