"""Loom's load-testing harness: `python -m loadtest --target HOST:PORT ...`.

It drives a running Loom server over gRPC (only the generated stubs in `loompb` are needed)
and reports throughput and latency in the conventions of `vllm bench serve`.
"""
