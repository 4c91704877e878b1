"""Offline benchmarks against the peers; each is `python -m bench.<name>` and writes its
figures to BENCHMARKS.md."""
