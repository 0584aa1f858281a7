"""Benchmark data and runs: NeRF-synthetic datasets, the procedural object, reconstruction, bench texture."""
