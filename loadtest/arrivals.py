"""When each request is sent: all at once, Poisson, or gamma-distributed gaps."""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets(
    num_requests: int, request_rate: float, burstiness: float, rng: np.random.Generator
) -> list[float]:
    """Send time of each request in seconds after the start; the first is sent at 0.

    Gaps are gamma-distributed with shape `burstiness` and mean `1 / request_rate`, so the
    mean rate is `request_rate` whatever the burstiness, and the gaps' coefficient of
    variation is `1 / sqrt(burstiness)`: burstiness 1 is a Poisson process, below 1 the
    requests come in bursts, above 1 they come more evenly. An infinite rate sends all at 0.
    """
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if not request_rate > 0:
        raise ValueError(f"request_rate must be > 0 (or inf), got {request_rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if num_requests == 0:
        return []
    if math.isinf(request_rate):
        return [0.0] * num_requests
    # Mean of gamma(shape k, scale theta) is k * theta; pick theta so it is 1 / rate.
    scale = 1.0 / (request_rate * burstiness)
    gaps = rng.gamma(shape=burstiness, scale=scale, size=num_requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]
