"""The Python stubs generated from proto/ (serving.proto, the public API; worker.proto, the
step contract), committed; `python -m loompb.generate` writes them again after a change.

- generate.py                                   the generator, and its --check
- serving_pb2.py(i), serving_pb2_grpc.py        loom.v1: Generation
- worker_pb2.py(i), worker_pb2_grpc.py          loom.worker.v1: Worker
"""
