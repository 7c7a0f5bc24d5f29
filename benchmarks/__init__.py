"""The benchmark suite (`make bench` = `python -m benchmarks`, see __main__.py) and standalone
benchmarks (`python -m benchmarks.ratelimit_replicas`, `python -m benchmarks.lifecycle_lateness`)."""
