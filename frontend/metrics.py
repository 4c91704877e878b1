"""Prometheus metrics of a serving engine, named as users of vLLM already scrape them.

Engine-wide series carry a `model` label; per-request series, the running and waiting gauges,
the fair-share charge and quota refusals carry `model` and `tenant`, the tenant's label as
frontend/tenant_labels.py says (bounded whatever callers send; a tenant that leaves the
tenants file takes its series with it).
Each server has its own registry, so several servers can live in one process (tests); each
registry also carries the process collector (`process_resident_memory_bytes` and the other
`process_*` series on Linux), which a soak reads to see whether memory grows.
"""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from frontend.lora_metrics import LoraMetrics
from frontend.tenant_labels import TenantLabels
from serving.metrics_http import MetricsEndpoint
from serving.server_config import ServerConfig
from serving.tenants import DEFAULT_TENANT

# Bucket bounds in seconds: a tiny CPU model answers in milliseconds, a large GPU model's
# queue can hold a request for minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ServingMetrics:
    """The series the README's Observability section lists. The engine loop thread feeds
    them; prometheus_client's metric objects are thread-safe, and `update_engine_stats` is
    only called from that thread."""

    def __init__(
        self,
        model_name: str,
        registry: CollectorRegistry | None = None,
        tenant_labels: TenantLabels | None = None,
    ) -> None:
        self.model_name = model_name
        self.registry = registry if registry is not None else CollectorRegistry()
        self.tenant_labels = tenant_labels or TenantLabels()
        # Every series made for a tenant label, so that a label can be dropped whole.
        self._series: dict[str, set[tuple[Any, tuple[str, ...]]]] = defaultdict(set)
        self._series_lock = threading.RLock()
        per_model = ["model"]
        per_tenant = ["model", "tenant"]

        def gauge(name: str, doc: str, labels: list[str] = per_model) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, per_tenant, buckets=buckets, registry=self.registry)

        self.num_requests_running = gauge(
            "loom:num_requests_running", "Requests running", per_tenant
        )
        self.num_requests_waiting = gauge(
            "loom:num_requests_waiting", "Requests waiting", per_tenant
        )
        self.tenant_service_tokens = counter(
            "loom:tenant_service_tokens",
            "Fair-share charge: fair_w_in per prompt token computed + fair_w_out per output token",
            per_tenant,
        )
        self.quota_rejections = counter(
            "loom:quota_rejections",
            "Requests refused by a tenant quota, by the limit they were over",
            ["model", "tenant", "limit"],
        )
        self.kv_cache_usage_perc = gauge(
            "loom:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1)"
        )
        self.kv_cache_blocks_used = gauge(
            "loom:kv_cache_blocks_used", "KV cache blocks held by requests (0 when idle)"
        )
        self.kv_cache_blocks = gauge("loom:kv_cache_blocks", "KV cache blocks in all")
        self.prefix_cache_blocks = gauge(
            "loom:prefix_cache_blocks",
            "KV cache blocks holding a cached prefix, held by a request or not (an idle engine "
            "retains them until they are reallocated)",
        )
        self.prefix_cache_queries = counter(
            "loom:prefix_cache_queries", "Prompt tokens looked up in the prefix cache", per_model
        )
        self.prefix_cache_hits = counter(
            "loom:prefix_cache_hits", "Prompt tokens found in the prefix cache", per_model
        )
        self.num_preemptions = counter("loom:num_preemptions", "Preempted requests", per_model)
        self.tenant_preemptions = counter(
            "loom:tenant_preemptions",
            "Preemptions of a tenant's running requests, by cause: blocks (none free for its "
            "next tokens), share (for a tenant further behind its fair share), priority",
            ["model", "tenant", "cause"],
        )
        self.request_deadlines = counter(
            "loom:request_deadlines",
            "Requests with a deadline by outcome: met (finished by it) or missed (ended for "
            "it, or finished after it)",
            ["model", "tenant", "outcome"],
        )
        self.spec_proposed_tokens = counter(
            "loom:spec_decode_num_draft_tokens", "Speculative decoding: tokens proposed", per_model
        )
        self.spec_accepted_tokens = counter(
            "loom:spec_decode_num_accepted_tokens",
            "Speculative decoding: proposed tokens the model accepted",
            per_model,
        )
        self.prompt_tokens = counter("loom:prompt_tokens", "Prompt tokens processed", per_tenant)
        self.generation_tokens = counter("loom:generation_tokens", "Tokens generated", per_tenant)
        self.request_finished = counter(
            "loom:request_finished",
            "Finished requests by finish reason",
            ["model", "tenant", "finish_reason"],
        )
        self.time_to_first_token = histogram(
            "loom:time_to_first_token_seconds",
            "From arrival to the first generated token",
            LATENCY_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "loom:inter_token_latency_seconds",
            "Between consecutive generated tokens of a request",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "loom:e2e_request_latency_seconds", "From arrival to finish", LATENCY_BUCKETS
        )
        self.request_queue_time = histogram(
            "loom:request_queue_time_seconds",
            "From arrival to the start of the engine step that produced its first output",
            LATENCY_BUCKETS,
        )
        self.loras = LoraMetrics(model_name, self.registry)
        ProcessCollector(registry=self.registry)
        for engine_wide in (
            self.kv_cache_usage_perc,
            self.kv_cache_blocks_used,
            self.kv_cache_blocks,
            self.prefix_cache_blocks,
            self.prefix_cache_queries,
            self.prefix_cache_hits,
            self.num_preemptions,
            self.spec_proposed_tokens,
            self.spec_accepted_tokens,
        ):
            engine_wide.labels(model_name)  # show 0 before the first step, not nothing
        # Engine counters are cumulative; remember the last reading to add only the increase.
        self._last_counts = dict.fromkeys(
            ("queries", "hits", "preemptions", "proposed", "accepted"), 0
        )
        self._last_service: dict[str, float] = {}
        self._last_tenant_counts: dict[tuple[str, str, str], int] = {}
        self._endpoint = MetricsEndpoint(self.registry, "metrics-http-close")

    def _of(self, metric: Any, tenant: str, *more: str) -> Any:
        """The child of a per-tenant metric for `tenant`'s label (and `more` labels)."""
        with self._series_lock:  # a reload cannot drop the label between the two lines
            return self._child(metric, self.tenant_labels.label(tenant), *more)

    def _child(self, metric: Any, label: str, *more: str) -> Any:
        values = (self.model_name, label, *more)
        with self._series_lock:
            self._series[label].add((metric, values))
            return metric.labels(*values)

    def update_engine_stats(self, stats: Any) -> None:
        """Called after every engine step with `engine.stats()`."""
        model = self.model_name
        running: dict[str, int] = defaultdict(int)  # by label: several tenants may share one
        waiting: dict[str, int] = defaultdict(int)
        with self._series_lock:
            for tenant, tenant_stats in stats.tenants.items():
                label = self.tenant_labels.label(tenant)
                running[label] += tenant_stats.num_running
                waiting[label] += tenant_stats.num_waiting
                increase = tenant_stats.service - self._last_service.get(tenant, 0.0)
                if increase > 0:
                    self._child(self.tenant_service_tokens, label).inc(increase)
                    self._last_service[tenant] = tenant_stats.service
                self._count_tenant_events(tenant, label, tenant_stats)
            for label in running:
                self._child(self.num_requests_running, label).set(running[label])
                self._child(self.num_requests_waiting, label).set(waiting[label])
        used = stats.num_blocks - stats.num_free_blocks
        self.kv_cache_usage_perc.labels(model).set(
            used / stats.num_blocks if stats.num_blocks else 0
        )
        self.kv_cache_blocks_used.labels(model).set(used)
        self.kv_cache_blocks.labels(model).set(stats.num_blocks)
        self.prefix_cache_blocks.labels(model).set(stats.num_cached_blocks)
        for key, value, metric in (
            ("queries", stats.prefix_cache_queries, self.prefix_cache_queries),
            ("hits", stats.prefix_cache_hits, self.prefix_cache_hits),
            ("preemptions", stats.num_preemptions, self.num_preemptions),
            ("proposed", stats.spec_proposed_tokens, self.spec_proposed_tokens),
            ("accepted", stats.spec_accepted_tokens, self.spec_accepted_tokens),
        ):
            if value > self._last_counts[key]:
                metric.labels(model).inc(value - self._last_counts[key])
            self._last_counts[key] = value
        self.loras.update(stats)

    def _count_tenant_events(self, tenant: str, tenant_label: str, stats: Any) -> None:
        """Preemptions by cause and deadlines by outcome: the increase since the last step."""
        readings = [
            ("preemptions", self.tenant_preemptions, cause, n)
            for cause, n in stats.preemptions.items()
        ]
        readings += [
            ("deadlines", self.request_deadlines, "met", stats.num_deadlines_met),
            ("deadlines", self.request_deadlines, "missed", stats.num_deadlines_missed),
        ]
        for kind, metric, which, value in readings:
            key = (kind, tenant, which)
            increase = value - self._last_tenant_counts.get(key, 0)
            if increase > 0:
                self._child(metric, tenant_label, which).inc(increase)
                self._last_tenant_counts[key] = value

    def set_tenants(self, names: list[str] | None) -> None:
        """The tenants of the (re)loaded tenants file, None without one. Their series show
        0 before they send anything; the series of tenants no longer in it go."""
        for label in self.tenant_labels.set_listed(names):
            self._forget(label)
        shown = self.tenant_labels.known()
        if names is None:  # callers name their tenant; those who name none are `default`
            shown.append(self.tenant_labels.label(DEFAULT_TENANT))
        for label in shown:
            for metric in (
                self.num_requests_running,
                self.num_requests_waiting,
                self.tenant_service_tokens,
            ):
                self._child(metric, label)

    def _forget(self, label: str) -> None:
        with self._series_lock:
            for metric, values in self._series.pop(label, ()):
                with contextlib.suppress(KeyError):  # never made after all
                    metric.remove(*values)

    def observe_quota_rejection(self, tenant: str, limit: str) -> None:
        self._of(self.quota_rejections, tenant, limit).inc()

    def observe_first_token(self, tenant: str, ttft: float, queue_time: float) -> None:
        self._of(self.time_to_first_token, tenant).observe(ttft)
        self._of(self.request_queue_time, tenant).observe(queue_time)

    def observe_tokens(self, tenant: str, num_tokens: int, gap: float | None) -> None:
        """`num_tokens` new tokens arrived `gap` seconds after the previous ones (None for
        the first tokens of a request, which have no predecessor)."""
        self._of(self.generation_tokens, tenant).inc(num_tokens)
        if gap is not None:
            per_token = gap / num_tokens
            histogram = self._of(self.inter_token_latency, tenant)
            for _ in range(num_tokens):
                histogram.observe(per_token)

    def observe_finished(
        self, tenant: str, finish_reason: str, num_prompt_tokens: int, e2e: float
    ) -> None:
        self._of(self.prompt_tokens, tenant).inc(num_prompt_tokens)
        self._of(self.request_finished, tenant, finish_reason).inc()
        self._of(self.e2e_request_latency, tenant).observe(e2e)

    def serve_http(self, config: ServerConfig) -> int:
        """Expose /metrics where the server's settings say; returns the bound port."""
        return self._endpoint.serve(config)

    def close(self) -> None:
        self._endpoint.close()
