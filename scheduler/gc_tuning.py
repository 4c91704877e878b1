"""The garbage collector in a serving process: its pauses must not stall the engine loop.

CPython's full (oldest-generation) collection walks every live container, and a busy engine
keeps many: each request's token lists, block tables, output state. At 1,024 running
requests one full collection takes over 100 ms, and with the default thresholds they come
often enough to set the loop's p99 step time. A server therefore, once started, freezes what
it loaded (model, tokenizer, modules: never garbage, never walked again) and raises the
thresholds so that young objects are collected in batches and full collections become rare;
cyclic garbage is still collected, only later.
"""

from __future__ import annotations

import gc

# Allocations between young collections, and how many of each generation before the next.
SERVING_THRESHOLDS = (50_000, 20, 100)


def tune_gc_for_serving() -> None:
    """Call once after start-up, before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)
