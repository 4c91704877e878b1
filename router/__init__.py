"""One endpoint over several engine replicas: `python -m router serve --backend HOST:PORT ...`
speaks the engines' public API and sends each request to the replica that likely caches its
prompt's prefix, unless that one is too busy. Uses the client stubs and serving/; no engine
code.

- config.py         RouterConfig (ServerConfig + backends, policy, margin, health checks)
- cli.py, __main__.py  the flags, generated from RouterConfig; signals
- server.py         the grpc.aio server: health (SERVING while a backend is), reflection,
                    metrics, drain; serve_router_in_thread
- servicer.py       loom.v1.Generation: auth, request ids, quotas, Abort, GetLoad summed
- relay.py          a generation call forwarded: key, tenant, deadline, streams, retries
- policy.py         prefix, least_loaded, round_robin; a prompt's block hashes
- prefix_index.py   what each backend's prefix cache likely holds (LRU of block hashes)
- backend.py, backend_pool.py  each backend's channel, state and load; polling, joining,
                    suspect, out, rejoining
- metrics.py        the router's Prometheus series
"""
