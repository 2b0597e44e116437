"""Benchmark harness (run with `make bench`; not part of pytest). See bench/README.md."""
