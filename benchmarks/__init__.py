"""Benchmarks of allspark-seg, run as modules from the repository root: `python -m benchmarks.speed.bench_train`."""
