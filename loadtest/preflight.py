"""The harness's options, checked before it sends anything: their values and how they go
together (`validate`), and what they need (`check_needs`): a run that would end in a
traceback after minutes of load (no matplotlib for --plot, a result path that cannot be
written) is refused at once, naming the option."""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path
from urllib.parse import urlsplit

from loadtest.tenants import check_tenants, parse_tenant


def validate(args: argparse.Namespace) -> None:
    check_needs(args)
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be >= 1")
    if not 0.0 <= args.cancel_rate <= 1.0:
        raise ValueError("--cancel-rate must be in [0, 1]")
    if args.cancel_max_delay < 0:
        raise ValueError("--cancel-max-delay must be >= 0")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError("--timeout must be > 0")
    if args.dataset in ("sharegpt", "jsonl") and args.dataset_path is None:
        raise ValueError(f"--dataset {args.dataset} needs --dataset-path")
    args.tenant_specs = [parse_tenant(text) for text in args.tenant]
    if args.tenant_specs:
        if args.api_key or args.tenants is not None:
            raise ValueError("--tenant does not go with --api-key or --tenants")
        if not math.isinf(args.request_rate):
            raise ValueError("--tenant gives each tenant its RATE: drop --request-rate")
        check_tenants(args.tenant_specs, args.num_prompts)
    if args.tenants is not None:
        if args.tenants < 1:
            raise ValueError("--tenants must be >= 1")
        if len(args.api_key) > 1 and args.tenants != len(args.api_key):
            raise ValueError("with several --api-key, --tenants must equal the number of keys")
        if len(args.api_key) == 1 and args.tenants > 1:
            raise ValueError("one --api-key is one tenant; give one key per tenant")


def check_needs(args: argparse.Namespace) -> None:
    """Raises ValueError naming the option and what it lacks."""
    if args.backend == "openai":
        parts = urlsplit(args.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"--backend openai needs --base-url http://HOST:PORT/v1, got {args.base_url!r}"
            )
    if args.plot is not None:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'loom[plot]'") from None
        _check_writable("--plot", args.plot)
    if args.save_result is not None:
        _check_writable("--save-result", args.save_result)
    if args.dataset_path is not None and not args.dataset_path.is_file():
        raise ValueError(f"--dataset-path: no file at {args.dataset_path}")
    if args.metrics_url is not None and urlsplit(args.metrics_url).scheme not in ("http", "https"):
        raise ValueError(f"--metrics-url must be an http:// URL, got {args.metrics_url!r}")


def _check_writable(option: str, path: Path) -> None:
    """Open the file for writing now (creating its directories, as the run would), and
    remove it again unless it was there: what cannot be written fails here, not after the
    run (a permission check alone passes places such as /proc that refuse new files)."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write it ({exc.strerror})") from None
