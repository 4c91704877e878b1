"""The sampling flags `python -m client generate` and `chat` share, each one field of the
server's SamplingParams (a flag left out is not sent: the server's default applies)."""

from __future__ import annotations

import argparse
from typing import Any

# field -> (type, help)
SAMPLING_FLAGS: dict[str, tuple[type, str | None]] = {
    "temperature": (float, "0 is greedy; default 1.0"),
    "top_p": (float, "nucleus mass; default 1.0"),
    "top_k": (int, "default 0 (off)"),
    "min_p": (float, "keep tokens at least min_p times as likely as the likeliest; default 0"),
    "seed": (int, "draws depend only on (seed, position); default unseeded"),
}


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    for name, (kind, help_text) in SAMPLING_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)


def sampling_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in SAMPLING_FLAGS}
