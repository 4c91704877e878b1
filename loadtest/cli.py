"""`python -m loadtest`: arguments, workload set-up, the run, and what is printed and saved."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import grpc
import numpy as np

from loadtest.arrivals import arrival_offsets
from loadtest.dataset_files import load_jsonl, load_sharegpt
from loadtest.datasets import (
    SampleRequest,
    Vocabulary,
    check_fits,
    random_requests,
    shared_prefix_requests,
)
from loadtest.driver import DriverOptions, run_workload
from loadtest.metrics import parse_goodput, per_tenant, summarize
from loadtest.openai_backend import run_workload_openai, served_model, tokenize
from loadtest.preflight import validate
from loadtest.report import format_table, result_document, save_result
from loadtest.tenants import format_tenant_table, tenant_arrivals
from loompb import serving_pb2, serving_pb2_grpc

DATASETS = ("random", "shared-prefix", "sharegpt", "jsonl")
BACKENDS = ("grpc", "openai")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Load-test a running Loom server over gRPC, or any OpenAI-compatible "
        "server over HTTP (in the conventions of `vllm bench serve`). "
        "`python -m loadtest soak --help`: a soak with faults, checked for leaks.",
    )
    p.add_argument("--backend", choices=BACKENDS, default="grpc", help="the API to load")
    p.add_argument("--target", default="127.0.0.1:50051", help="grpc: the server's HOST:PORT")
    p.add_argument("--base-url", help="openai: the API's base URL, http://HOST:PORT/v1")
    p.add_argument("--num-prompts", type=int, default=1000, help="requests to send")
    p.add_argument("--seed", type=int, default=0, help="seeds the workload, arrivals, cancels")
    g = p.add_argument_group("arrivals")
    g.add_argument(
        "--request-rate", type=float, default=math.inf, help="requests/s; inf sends all at once"
    )
    g.add_argument(
        "--burstiness", type=float, default=1.0, help="1: Poisson arrivals; other: gamma gaps"
    )
    g.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", choices=DATASETS, default="random")
    g.add_argument("--dataset-path", type=Path, help="file for sharegpt / jsonl")
    g.add_argument(
        "--input-len",
        type=int,
        help="random prompt (or suffix) tokens (default: 1024, or less to fit the model)",
    )
    g.add_argument(
        "--output-len",
        type=int,
        help="random output tokens (default: 128, or a quarter of what the model holds)",
    )
    g.add_argument(
        "--range-ratio", type=float, default=0.0, help="lengths uniform in len*(1 -+ ratio)"
    )
    g.add_argument("--prefix-len", type=int, default=256, help="shared-prefix: prefix tokens")
    g.add_argument("--num-prefixes", type=int, default=1, help="shared-prefix: distinct prefixes")
    g.add_argument("--sharegpt-output-len", type=int, help="fixed max_tokens for sharegpt")
    g.add_argument("--ignore-eos", action="store_true", help="sharegpt/jsonl: generate past EOS")
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g = p.add_argument_group("faults and goals")
    g.add_argument("--cancel-rate", type=float, default=0.0, help="share of requests to cancel")
    g.add_argument(
        "--cancel-max-delay",
        type=float,
        default=1.0,
        help="a cancelled request is cancelled uniform(0, this) seconds after it is sent",
    )
    g.add_argument("--timeout", type=float, default=None, help="per-request deadline (s)")
    g.add_argument(
        "--goodput", nargs="+", metavar="NAME:MS", help="goals, e.g. ttft:500 tpot:50 e2el:5000"
    )
    g.add_argument(
        "--deadlines",
        type=parse_deadlines,
        metavar="MS[,MS...]",
        help="each request gets one of these, drawn at random, as its deadline_ms; the run "
        "reports how many completed within it",
    )
    g = p.add_argument_group("tenancy")
    g.add_argument(
        "--api-key", action="append", default=[], help="bearer key; repeat: one key per tenant"
    )
    g.add_argument("--tenants", type=int, default=None, help="spread requests over N tenants")
    g.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="NAME:KEY:RATE",
        help="repeatable: a tenant with its own key (empty: x-loom-tenant NAME) and its own "
        "arrivals at RATE req/s; --num-prompts is split in proportion to the rates",
    )
    g = p.add_argument_group("output")
    g.add_argument("--save-result", type=Path, help="write the summary and per-request data")
    g.add_argument("--plot", type=Path, help="PNG of latency distributions and a timeline")
    g.add_argument(
        "--metrics-url",
        help="the server's Prometheus endpoint (http://HOST:PORT/metrics): its running and "
        "waiting requests are sampled during the run, saved and plotted",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def build_workload(
    args: argparse.Namespace,
    info: serving_pb2.ModelInfo,
    tokenize: Callable[[str], list[int]],
    rng: np.random.Generator,
) -> list[SampleRequest]:
    """`info`: the ModelInfo fields the workload needs (model length, vocabulary)."""
    if args.dataset in ("random", "shared-prefix") and not info.vocab_size:
        raise ValueError(
            f"the server does not say its vocabulary size: --dataset {args.dataset} draws "
            "token ids from it; use --dataset sharegpt or jsonl"
        )
    vocab = Vocabulary(info.vocab_size, frozenset({info.bos_token_id, info.eos_token_id}))
    if args.dataset in ("random", "shared-prefix"):
        fill_default_lengths(args, info.max_model_len)
    if args.dataset == "random":
        requests = random_requests(
            args.num_prompts, args.input_len, args.output_len, args.range_ratio, vocab, rng
        )
    elif args.dataset == "shared-prefix":
        requests = shared_prefix_requests(
            args.num_prompts,
            args.prefix_len,
            args.num_prefixes,
            args.input_len,
            args.output_len,
            args.range_ratio,
            vocab,
            rng,
        )
    elif args.dataset == "sharegpt":
        requests = load_sharegpt(
            args.dataset_path,
            args.num_prompts,
            tokenize,
            info.max_model_len,
            rng,
            args.sharegpt_output_len,
        )
    else:
        requests = load_jsonl(args.dataset_path, args.num_prompts, tokenize, info.max_model_len)
    if args.ignore_eos:
        for req in requests:
            req.ignore_eos = True
    if args.deadlines:
        # Their own draws: a run with deadlines has the same workload and arrivals as without.
        drawn = np.random.default_rng([args.seed, 1]).choice(args.deadlines, size=len(requests))
        for req, deadline_ms in zip(requests, drawn, strict=True):
            req.deadline_ms = int(deadline_ms)
    check_fits(requests, info.max_model_len)
    return requests


DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN = 1024, 128  # as `vllm bench serve` has them


def fill_default_lengths(args: argparse.Namespace, max_model_len: int) -> None:
    """--input-len and --output-len the user left out, as `vllm bench serve` sets them but cut
    to what the served model holds (with the shared prefix, and the longest lengths
    --range-ratio draws): a quarter of it for the output at most, the rest for the input."""
    if args.input_len is not None and args.output_len is not None:
        return
    prefix = args.prefix_len if args.dataset == "shared-prefix" else 0
    room = int((max_model_len - prefix) / (1.0 + args.range_ratio))
    if args.output_len is None:
        args.output_len = max(1, min(DEFAULT_OUTPUT_LEN, room // 4))
    if args.input_len is None:
        args.input_len = max(1, min(DEFAULT_INPUT_LEN, room - args.output_len))
    print(
        f"--input-len {args.input_len} --output-len {args.output_len} "
        f"(the model holds {max_model_len} tokens)",
        file=sys.stderr,
    )
def parse_deadlines(text: str) -> list[int]:
    """`100,500,5000` -> [100, 500, 5000] (milliseconds, each >= 1)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of milliseconds: {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every deadline must be >= 1 ms, got {text!r}")
    return values


def grpc_workload(
    args: argparse.Namespace, metadata: list[tuple[str, str]], rng: np.random.Generator
) -> tuple[serving_pb2.ModelInfo, list[SampleRequest]]:
    with grpc.insecure_channel(args.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(serving_pb2.GetModelInfoRequest(), metadata=metadata or None)

        def tokenize_text(text: str) -> list[int]:
            request = serving_pb2.TokenizeRequest(text=text)
            return list(stub.Tokenize(request, metadata=metadata or None).token_ids)

        return info, build_workload(args, info, tokenize_text, rng)


def run_info(
    args: argparse.Namespace, info: serving_pb2.ModelInfo, argv: list[str]
) -> dict[str, object]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m loadtest", *redacted(argv)]),
        "client_host": platform.node(),
        "backend": args.backend,
        "target": args.base_url if args.backend == "openai" else args.target,
        "model_name": info.model_name,
        "device": info.device,
        "dtype": info.dtype,
        "dataset": args.dataset,
        "num_prompts": args.num_prompts,
        # JSON has no infinity; "inf" reads back with float().
        "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "seed": args.seed,
        "cancel_rate": args.cancel_rate,
        "timeout": args.timeout,
        "deadlines_ms": args.deadlines,
        "num_tenants": len(args.tenant_specs) or len(args.api_key) or args.tenants,
        "tenant_rates": {spec.name: spec.rate for spec in args.tenant_specs},
    }


def redacted(argv: list[str]) -> list[str]:
    """The command line as saved: API keys replaced by `***`."""
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--api-key":
            arg = "***"
        elif i > 0 and argv[i - 1] == "--tenant" and arg.count(":") >= 2:
            name, _, rest = arg.partition(":")
            arg = f"{name}:***:{rest.rpartition(':')[2]}"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["soak"]:
        from loadtest.soak_cli import main as soak

        return soak(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        validate(args)
        slos = parse_goodput(args.goodput)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = DriverOptions(
        max_concurrency=args.max_concurrency,
        cancel_rate=args.cancel_rate,
        cancel_max_delay=args.cancel_max_delay,
        timeout=args.timeout,
        api_keys=list(args.api_key),
        num_tenants=args.tenants,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        show_progress=not args.no_progress,
        metrics_url=args.metrics_url,
    )
    # One generator, drawn from in a fixed order (workload, arrivals, cancels): a seed fixes
    # the whole run.
    rng = np.random.default_rng(args.seed)
    options.tenant_specs = specs = args.tenant_specs
    metadata = [("authorization", f"Bearer {args.api_key[0]}")] if args.api_key else []
    if specs:
        metadata = specs[0].metadata
    where = args.base_url if args.backend == "openai" else args.target
    try:
        if args.backend == "openai":
            info = served_model(args.base_url, metadata)
            requests = build_workload(
                args, info, lambda text: tokenize(args.base_url, metadata, text), rng
            )
        else:
            info, requests = grpc_workload(args, metadata, rng)
    except grpc.RpcError as e:
        print(f"error: {where}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if specs:
        arrivals, options.request_tenants = tenant_arrivals(
            len(requests), specs, args.burstiness, rng
        )
    else:
        arrivals = arrival_offsets(len(requests), args.request_rate, args.burstiness, rng)
    if args.backend == "openai":
        run = run_workload_openai(args.base_url, info.model_name, requests, arrivals, options, rng)
    else:
        run = run_workload(args.target, requests, arrivals, options, rng)
    results, duration, timeline = asyncio.run(run)

    summary = summarize(results, duration, slos)
    print(format_table(summary, info.model_name))
    tenants = per_tenant(results, duration)
    if tenants:
        print(format_tenant_table(tenants))
    if args.save_result:
        document = result_document(summary, results, run_info(args, info, argv), tenants)
        if timeline is not None:
            document["server_timeline"] = asdict(timeline)
        save_result(args.save_result, document)
    if args.plot:
        from loadtest.plot import save_plot

        save_plot(args.plot, results, f"{info.model_name} @ {where}", timeline)
    return 0
