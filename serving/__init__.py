"""What every Loom gRPC server shares, the engine's and the router's: settings, TLS, callers
(keys and tenants), quotas, the public API's port, /metrics, a server on its own thread. No
engine code.

- server_config.py  ServerConfig: what every Loom server takes (address, keys, TLS, limits)
- auth.py           who is calling: the tenant of a bearer key, or x-loom-tenant
- tenants.py        the tenants file (TOML, hashed keys, errors by file:line:field), --api-keys
- quotas.py         per-tenant concurrency, token bucket and per-request cap, before any work
- tls.py            server credentials for TLS and mutual TLS
- public_api.py     the services and the port (plaintext or TLS) of every public-API server
- metrics_http.py   /metrics over plain HTTP for a registry (the engine's, the router's)
- server_thread.py  a server on its own thread and event loop
"""
