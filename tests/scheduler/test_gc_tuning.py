"""A serving process freezes what it loaded and raises the collector's thresholds."""

from __future__ import annotations

import subprocess
import sys

from scheduler.gc_tuning import SERVING_THRESHOLDS
from tests.conftest import REPO_ROOT


def test_tuning_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    code = (
        "import gc; from scheduler.gc_tuning import tune_gc_for_serving; "
        "print(gc.get_freeze_count() == 0); tune_gc_for_serving(); "
        "print(gc.get_freeze_count() > 1000, gc.get_threshold())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "True"
    assert out[1] == f"True {SERVING_THRESHOLDS}"
