"""The router's Prometheus series: per backend its calls, errors, routing decisions, whether it
is up and how loaded it is; and the latency the router adds before a call reaches a backend.
Each router has its own registry, so several can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loompb import serving_pb2
from serving.metrics_http import MetricsEndpoint
from serving.server_config import ServerConfig

# Seconds: routing takes well under a millisecond unless a text prompt must be tokenized.
ADDED_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
DECISIONS = ("prefix_hit", "prefix_miss", "load_fallback", "least_loaded", "round_robin")


class RouterMetrics:
    def __init__(self, backends: list[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "loom:router_requests",
            "Calls forwarded to a backend",
            ["backend", "method"],
            registry=r,
        )
        self.errors = Counter(
            "loom:router_request_errors",
            "Forwarded calls that ended with an error status (the backend's, or UNAVAILABLE when "
            "it went away)",
            ["backend", "method", "code"],
            registry=r,
        )
        self.decisions = Counter(
            "loom:router_routing_decisions",
            "Backends chosen for generation calls, by why: prefix_hit (it caches the longest "
            "prefix), prefix_miss (no backend does: the least loaded), load_fallback (the one "
            "caching it was too busy: the least loaded), least_loaded, round_robin",
            ["backend", "decision"],
            registry=r,
        )
        self.retries = Counter(
            "loom:router_retries",
            "Generation calls tried on another backend after this one refused them UNAVAILABLE",
            ["backend"],
            registry=r,
        )
        self.added_latency = Histogram(
            "loom:router_added_latency_seconds",
            "From a call's arrival at the router to its forwarding to a backend: "
            "authentication, tokenizing and hashing the prompt, choosing the backend",
            ["method"],
            buckets=ADDED_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_up = Gauge(
            "loom:router_backend_up",
            "1 while the backend takes new requests",
            ["backend"],
            registry=r,
        )
        self.in_flight = Gauge(
            "loom:router_requests_in_flight",
            "Generation calls the router has in flight on the backend",
            ["backend"],
            registry=r,
        )
        self.backend_load = Gauge(
            "loom:router_backend_load",
            "The backend's requests running + waiting, as the router estimates them",
            ["backend"],
            registry=r,
        )
        self.backend_kv_usage = Gauge(
            "loom:router_backend_kv_cache_usage_perc",
            "The backend's KV cache blocks in use (0 to 1), as of its last poll",
            ["backend"],
            registry=r,
        )
        self.backend_hit_rate = Gauge(
            "loom:router_backend_prefix_cache_hit_rate",
            "The backend's prefix-cache hit rate over its life, as of its last poll",
            ["backend"],
            registry=r,
        )
        for backend in backends:  # every series shows from the start, at 0
            for decision in DECISIONS:
                self.decisions.labels(backend, decision)
            for gauge in (self.backend_up, self.in_flight, self.backend_load):
                gauge.labels(backend).set(0)
            self.retries.labels(backend)
        self._endpoint = MetricsEndpoint(self.registry, "router-metrics-close")

    def observe_poll(self, backend: str, load: serving_pb2.Load, estimated: int) -> None:
        self.backend_load.labels(backend).set(estimated)
        used = load.num_kv_blocks_used / load.num_kv_blocks if load.num_kv_blocks else 0.0
        self.backend_kv_usage.labels(backend).set(used)
        self.backend_hit_rate.labels(backend).set(load.prefix_cache_hit_rate)

    def decision_count(self, backend: str, decision: str) -> float:
        """For tests and benchmarks: how many calls went to `backend` for this reason."""
        value = self.registry.get_sample_value(
            "loom:router_routing_decisions_total", {"backend": backend, "decision": decision}
        )
        return value or 0.0

    def serve_http(self, config: ServerConfig) -> int:
        """Expose /metrics where the server's settings say; returns the bound port."""
        return self._endpoint.serve(config)

    def close(self) -> None:
        self._endpoint.close()
