"""What every Loom gRPC server shares, the engine's and the router's: settings, TLS, callers
(keys and tenants), quotas, the public API's port, /metrics, a server on its own thread. No
engine code."""
