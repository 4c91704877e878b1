"""Requests per adapter in the engine's stats, and the series the Inference Extension's
endpoint picker reads (`loom:lora_requests_info`), from them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from contract.sampling import SamplingParams
from frontend.lora_metrics import LoraMetrics
from scheduler import Engine


def _scrape(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("loom:lora") and not line.startswith("#")
    ]


def test_stats_and_series_follow_requests_per_adapter(random_adapted) -> None:
    specs = tuple(f"{name}={path}" for name, path in random_adapted.adapters.items())
    engine = Engine.from_model_dir(
        random_adapted.model_dir, device="cpu", lora=specs, max_loras=2, num_kv_blocks=64
    )
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    for lora in ("all8", "all8", "qvdown4", "gateup16", None):
        engine.add_request([1, 5, 6, 7], params, lora=lora)
    stats = engine.stats()
    assert stats.lora_running == {}
    assert stats.lora_waiting == {"all8": 2, "qvdown4": 1, "gateup16": 1}
    assert (stats.max_loras, stats.loras_served) == (2, ("all8", "qvdown4", "gateup16"))

    registry = CollectorRegistry()
    metrics = LoraMetrics("m", registry)
    engine.step()  # two adapters run, the third waits for a seat
    stats = engine.stats()
    assert stats.lora_running == {"all8": 2, "qvdown4": 1}
    assert stats.lora_waiting == {"gateup16": 1}
    metrics.update(stats)
    lines = _scrape(registry)
    [info] = [line for line in lines if line.startswith("loom:lora_requests_info")]
    assert info.startswith(
        'loom:lora_requests_info{max_lora="2",running_lora_adapters="all8,qvdown4",'
        'waiting_lora_adapters="gateup16"}'
    )
    assert 'loom:lora_requests_running{lora="all8",model="m"} 2.0' in lines
    assert 'loom:lora_requests_waiting{lora="gateup16",model="m"} 1.0' in lines
    assert 'loom:lora_adapters_served{model="m"} 3.0' in lines

    while engine.has_unfinished():
        engine.step()
    engine.loras.unload("gateup16")
    metrics.update(engine.stats())
    lines = _scrape(registry)
    [info] = [line for line in lines if line.startswith("loom:lora_requests_info")]
    assert 'running_lora_adapters="",waiting_lora_adapters=""' in info  # one series, updated
    assert not any('lora="gateup16"' in line for line in lines)
    assert 'loom:lora_adapters_served{model="m"} 2.0' in lines
