"""What every Loom gRPC server shares, the engine's and the router's: settings, TLS, callers
(keys and tenants), quotas, request ids, the public API's server and port, /metrics, a server
on its own thread; and with the worker's too, the quiet refusal of hostile bytes. No engine
code.

- server_config.py  ServerConfig: what every Loom server takes (address, keys, TLS, limits)
- auth.py           who is calling: the tenant of a bearer key, or x-loom-tenant
- tenants.py        the tenants file (TOML, hashed keys, errors by file:line:field), --api-keys
- quotas.py         per-tenant concurrency, token bucket and per-request cap, for every
                    sequence of a call, before any work
- request_ids.py    what a caller may name a request: visible ASCII, at most 128 characters
- rpc_guard.py      undecodable request bytes and unimplemented methods refused on every RPC
                    (the worker's too), with one throttled warning and no traceback
- tls.py            server credentials for TLS and mutual TLS
- public_api.py     the grpc.aio server, services and port (plaintext or TLS) of every
                    public-API server
- health.py         grpc.health.v1 whose Watch streams end when the server drains, and how
                    long a stopping server waits for its calls' last statuses
- metrics_http.py   /metrics for a registry (the engine's, the router's), over HTTP or mutual TLS
- server_thread.py  a server on its own thread and event loop
"""
