"""`--backend openai`: the same workloads over an OpenAI-compatible HTTP API (`--base-url`),
streamed from /v1/completions, with the same per-request measurements and report keys.

Token-id prompts (the random and shared-prefix datasets) go as a list of ids; text prompts
as text, counted by the server's /tokenize. Usage (`stream_options.include_usage`) gives the
prompt and output lengths; each chunk carrying a choice is one engine step's tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.datasets import SampleRequest
from loadtest.driver import DriverOptions, drive, tenant_of
from loadtest.http_client import HttpCall
from loadtest.metrics import RequestResult
from loadtest.server_metrics import ServerTimeline

# HTTP statuses by the gRPC status name the gRPC backend would report.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FINISH_FAILURES = {"error": "INTERNAL", "abort": "ABORTED"}


@dataclass(slots=True)
class ServedModel:
    """What the harness reads of the served model (the gRPC backend's ModelInfo fields)."""

    model_name: str
    max_model_len: int
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    device: str = ""
    dtype: str = ""


def _get_json(url: str, headers: list[tuple[str, str]], body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=dict(headers))
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (user's URL)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise ConnectionError(f"{url}: HTTP {exc.code}: {detail}") from exc


def served_model(base_url: str, headers: list[tuple[str, str]]) -> ServedModel:
    [entry, *_] = _get_json(f"{base_url}/models", headers)["data"]
    eos = entry.get("eos_token_ids") or [-1]
    return ServedModel(
        model_name=entry["id"],
        max_model_len=int(entry.get("max_model_len") or 0),
        vocab_size=int(entry.get("vocab_size") or 0),
        bos_token_id=int(entry.get("bos_token_id", -1)),
        eos_token_id=int(eos[0]),
    )


def tokenize(base_url: str, headers: list[tuple[str, str]], text: str) -> list[int]:
    root = base_url.removesuffix("/v1")
    return list(_get_json(f"{root}/tokenize", headers, {"prompt": text})["tokens"])


def request_body(sample: SampleRequest, model: str, options: DriverOptions) -> dict:
    body = {
        "model": model,
        "prompt": sample.prompt if sample.prompt_token_ids is None else sample.prompt_token_ids,
        "max_tokens": sample.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": sample.ignore_eos,
    }
    if options.top_k:
        body["top_k"] = options.top_k
    if sample.deadline_ms is not None:
        body["deadline_ms"] = sample.deadline_ms
    return body


async def _stream(call: HttpCall, result: RequestResult, start: float) -> None:
    status = await call.status()
    if status != 200:
        result.status = STATUS_NAMES.get(status, f"HTTP_{status}")
        result.error = (await call.body()).decode(errors="replace")[:300]
        return
    last = None
    async for event in call.events():
        if not isinstance(event, dict):
            continue  # [DONE]
        if "error" in event:
            error = event["error"]
            result.status = STATUS_NAMES.get(error.get("code"), "INTERNAL")
            result.error = error.get("message", "")
            return
        now = time.perf_counter()
        if event.get("choices"):
            if last is None:
                result.ttft = now - start
            else:
                result.itls.append(now - last)
            last = now
            reason = event["choices"][0].get("finish_reason")
            if reason in _FINISH_FAILURES:
                result.status, result.error = _FINISH_FAILURES[reason], f"finish_reason {reason}"
        if event.get("usage"):
            result.output_len = event["usage"]["completion_tokens"]
            result.prompt_len = event["usage"]["prompt_tokens"] or result.prompt_len


async def _send_one(
    url: str, body: dict, index: int, sample: SampleRequest, options: DriverOptions,
    cancel_after: float | None, run_start: float,
) -> RequestResult:  # fmt: skip
    tenant, headers = tenant_of(index, options)
    start = time.perf_counter()
    result = RequestResult(
        index=index,
        start_time=start - run_start,
        prompt_len=sample.prompt_len,
        tenant=tenant,
        cancel_planned=cancel_after is not None,
        deadline_ms=sample.deadline_ms,
    )
    limits = [t for t in (cancel_after, options.timeout) if t is not None]
    try:
        async with HttpCall(url, body, headers) as call:
            await asyncio.wait_for(_stream(call, result, start), min(limits, default=None))
    except asyncio.TimeoutError:
        # The connection closes on leaving the call: the server aborts the request.
        cancelled = cancel_after is not None and cancel_after == min(limits)
        result.status = "CANCELLED" if cancelled else "DEADLINE_EXCEEDED"
        result.error = "cancelled by the client" if cancelled else "deadline exceeded"
    except (OSError, ConnectionError, ValueError) as exc:
        result.status, result.error = "UNAVAILABLE", f"{type(exc).__name__}: {exc}"
    result.e2el = time.perf_counter() - start
    return result


async def run_workload_openai(
    base_url: str,
    model: str,
    requests: Sequence[SampleRequest],
    arrivals: Sequence[float],
    options: DriverOptions,
    rng: np.random.Generator,
) -> tuple[list[RequestResult], float, ServerTimeline | None]:
    url = f"{base_url}/completions"

    def send(index: int, cancel_after: float | None, run_start: float) -> Awaitable:
        sample = requests[index]
        body = request_body(sample, model, options)
        return _send_one(url, body, index, sample, options, cancel_after, run_start)

    return await drive(len(requests), arrivals, options, rng, send)
