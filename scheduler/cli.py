"""`python -m scheduler serve`: load a model, start the engine loop and the gRPC server.

With no flags it serves the bundled models/stories260K on 127.0.0.1:50051, on the GPU when
one is present and on the CPU otherwise. SIGTERM or Ctrl-C drains: health turns NOT_SERVING,
new calls get UNAVAILABLE, requests in flight get --shutdown-timeout seconds to finish and are
aborted after it (a second signal aborts them at once), and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scheduler.auth import load_api_keys
from scheduler.frontend import Frontend, FrontendOptions
from scheduler.queue_policy import QUEUE_POLICIES

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "models" / "stories260K"
log = logging.getLogger("loom.serve")


def parse_bytes(text: str) -> int:
    """`1073741824`, `512MiB`, `2G`, `1.5GB` -> bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scheduler")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model over gRPC", description=__doc__)
    add = serve.add_argument

    add("--model", default=str(BUNDLED_MODEL), help="Meta or Hugging Face Llama model dir")
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    add("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    add(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights and KV cache (default: float32 on CPU, bfloat16 on CUDA)",
    )
    add("--block-size", type=int, default=16, help="tokens per KV cache block")
    kv = serve.add_mutually_exclusive_group()
    kv.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache size in blocks")
    kv.add_argument(
        "--kv-cache-memory",
        type=parse_bytes,
        default=None,
        help="KV cache size in bytes, e.g. 2GiB (default: sized by the worker)",
    )
    add("--max-model-len", type=int, default=None, help="default: the model's maximum")
    add("--max-num-seqs", type=int, default=256, help="most requests running in one step")
    add("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    add(
        "--long-prefill-threshold",
        type=int,
        default=512,
        help="largest prefill chunk one request gets in one step",
    )
    add(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse KV blocks of identical prompt prefixes",
    )
    add(
        "--max-queued-requests",
        type=int,
        default=None,
        help="waiting requests beyond this get RESOURCE_EXHAUSTED (default: no cap)",
    )
    add("--queue-policy", default="fcfs", choices=QUEUE_POLICIES, help="who waits least")
    add(
        "--api-keys",
        default=None,
        metavar="FILE",
        help="lines `KEY TENANT`; calls must send `authorization: Bearer KEY`",
    )
    add(
        "--max-request-bytes",
        type=parse_bytes,
        default=1 << 20,
        help="largest request message accepted (default 1MiB)",
    )
    add("--metrics-port", type=int, default=None, help="Prometheus /metrics port (default: off)")
    add(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    health = commands.add_parser(
        "health", help="ask a server's grpc.health.v1 service; exit 0 only when SERVING"
    )
    health.add_argument("--target", default="127.0.0.1:50051", help="host:port")
    health.add_argument("--service", default="", help="service name ('' is the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds")
    return parser


def check_health(target: str, service: str, timeout: float) -> int:
    """For container health checks: prints the status, exits 0 only when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name}: {exc.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def default_device() -> str:
    import torch  # the in-process worker needs torch anyway; the scheduler modules do not

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_engine(args: argparse.Namespace):  # -> scheduler.Engine
    from scheduler.engine import Engine

    started = time.monotonic()
    engine = Engine.from_model_dir(
        args.model,
        device=args.device or default_device(),
        dtype=args.dtype,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        kv_cache_memory=args.kv_cache_memory,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        long_prefill_threshold=args.long_prefill_threshold,
        enable_prefix_caching=args.enable_prefix_caching,
        max_queued_requests=args.max_queued_requests,
        queue_policy=args.queue_policy,
        max_model_len=args.max_model_len,
    )
    info = engine.info
    log.info(
        "loaded %s from %s in %.1f s: vocab %d, max length %d, %s on %s",
        info.model_name,
        args.model,
        time.monotonic() - started,
        info.vocab_size,
        engine.max_model_len,
        info.dtype,
        info.device,
    )
    log.info(
        "KV cache: %d blocks x %d tokens = %d tokens; prefix caching %s",
        info.num_kv_blocks,
        info.block_size,
        info.num_kv_blocks * info.block_size,
        "on" if args.enable_prefix_caching else "off",
    )
    return engine


async def serve(engine, options: FrontendOptions) -> int:
    frontend = Frontend(engine, options)
    await frontend.start()
    if frontend.metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", options.host, frontend.metrics_port)
    # Last, once everything is up: scripts wait for this line.
    log.info(
        "listening on %s:%d (loom.v1.Generation, grpc.health.v1, reflection)",
        options.host,
        frontend.port,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining (a second signal aborts requests in flight)")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, frontend.cut_drain_short)
    await frontend.drain()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":
        return check_health(args.target, args.service, args.timeout)
    if not Path(args.model).is_dir():
        print(f"error: no model directory at {args.model}; pass --model DIR", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    api_keys = load_api_keys(args.api_keys) if args.api_keys else None
    if api_keys:
        log.info("API keys: %d keys for %d tenants", len(api_keys), len(set(api_keys.values())))
    options = FrontendOptions(
        host=args.host,
        port=args.port,
        api_keys=api_keys,
        metrics_port=args.metrics_port,
        shutdown_timeout=args.shutdown_timeout,
        max_request_bytes=args.max_request_bytes,
    )
    engine = load_engine(args)
    try:
        return asyncio.run(serve(engine, options))
    except (RuntimeError, OSError) as exc:  # a port that is taken: gRPC's, or the metrics one
        if not isinstance(exc, OSError) and "bind" not in str(exc).lower():
            raise
        log.error("cannot listen on %s: %s", args.host, exc)
        return 2
