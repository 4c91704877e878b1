"""Start-up stages logged as they run, so a long start says what it is doing and how long each
part took: `reading the weights ...`, then `reading the weights: 2.4 s`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def log_stage(logger: logging.Logger, what: str) -> Iterator[None]:
    logger.info("%s ...", what)
    started = time.monotonic()
    yield
    logger.info("%s: %.1f s", what, time.monotonic() - started)
