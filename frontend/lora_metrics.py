"""The LoRA series, named as vLLM's that the Gateway API Inference Extension's endpoint
picker reads to route by adapter: `loom:lora_requests_info`, one series whose labels list
the adapters with running and with waiting requests (comma-separated) and `max_lora`, its
value the time of the last update; beside it, requests per adapter and the adapters served.

    loom:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",
                            waiting_lora_adapters="sql"} 1.7e9
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge


class LoraMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry) -> None:
        self.model_name = model_name
        self.info = Gauge(
            "loom:lora_requests_info",
            "Running and waiting LoRA adapters (comma-separated names) and max_lora; the "
            "value is the time of the last update",
            ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            registry=registry,
        )
        self.running = Gauge(
            "loom:lora_requests_running", "Requests running per LoRA adapter", ["model", "lora"],
            registry=registry,
        )  # fmt: skip
        self.waiting = Gauge(
            "loom:lora_requests_waiting", "Requests waiting per LoRA adapter", ["model", "lora"],
            registry=registry,
        )  # fmt: skip
        self.served = Gauge(
            "loom:lora_adapters_served", "LoRA adapters served", ["model"], registry=registry
        )
        self._info_labels: tuple[str, str, str] | None = None
        self._shown: set[str] = set()  # adapters with per-adapter series

    def update(self, stats: Any) -> None:
        """From EngineStats, on the engine loop thread after each step."""
        labels = (
            str(stats.max_loras),
            ",".join(sorted(stats.lora_running)),
            ",".join(sorted(stats.lora_waiting)),
        )
        if labels != self._info_labels:
            if self._info_labels is not None:
                self.info.remove(*self._info_labels)  # one series, as the picker expects
            self._info_labels = labels
        self.info.labels(*labels).set_to_current_time()
        names = set(stats.loras_served) | set(stats.lora_running) | set(stats.lora_waiting)
        for name in self._shown - names:  # unloaded and drained
            self.running.remove(self.model_name, name)
            self.waiting.remove(self.model_name, name)
        for name in names:
            self.running.labels(self.model_name, name).set(stats.lora_running.get(name, 0))
            self.waiting.labels(self.model_name, name).set(stats.lora_waiting.get(name, 0))
        self._shown = names
        self.served.labels(self.model_name).set(len(stats.loras_served))
