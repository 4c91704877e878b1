"""What every Loom gRPC server shares, the engine's and the router's: settings, TLS, callers
(keys and tenants), quotas, request ids, the public API's server and port, /metrics, a server
on its own thread; and with the worker's too, the quiet refusal of undecodable requests and
of unimplemented methods (rpc_guard.py). No engine code."""
