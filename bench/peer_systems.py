"""The systems `python -m bench peers` runs on one workload: Loom's engine, and its peers
(transformers' `generate()`, a Meta-style static batch loop, llama.cpp's `llama-server`).

Each takes the whole workload in arrival order and returns its wall time and every request's
greedy output token ids; a static-batching peer runs `batch_size` requests at a time, and
llama-server holds `batch_size` slots. `loom_startup` and `llama_startup` time a fresh
process from spawn to its first token, with its peak memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import REPO_ROOT, Workload, build_engine, run_workload, timed, warm_up
from modelfiles.model_source import ModelSource

Run = tuple[float, list[list[int]]]  # wall seconds, each request's output token ids


class System(Protocol):
    name: str
    static: bool  # runs static batches: a batch's padding is work it does
    batch_size: int  # a static batch's size; llama.cpp's slots; 0 for Loom

    def describe(self) -> str: ...
    def resize(self, batch_size: int) -> None: ...
    def run(self, workload: Workload) -> Run: ...
    def close(self) -> None: ...


class Loom:
    name, static, batch_size = "Loom", False, 0

    def __init__(self, model: str, device: str, **settings: object) -> None:
        self.engine, _ = build_engine(model, device, **settings)
        self.activations = settings.get("activations", "int16")
        self.quantization = settings.get("quantization", "auto")
        warm_up(self.engine)

    def describe(self) -> str:
        weights = f"packed weights take {self.activations} activations"
        if self.quantization == "bf16":
            weights = "`--quantization bf16`: bfloat16 weights take float32 activations"
        elif self.quantization != "auto":
            weights += f"; `--quantization {self.quantization}`"
        return ("Loom: continuous batching, its offline engine, without its prefix cache; "
                f"{weights}")  # fmt: skip

    def resize(self, batch_size: int) -> None:
        raise ValueError("Loom batches continuously: there is no batch size to sweep")

    def run(self, workload: Workload) -> Run:
        return run_workload(self.engine, workload)

    def close(self) -> None:
        pass


# ---- transformers ------------------------------------------------------------------------


def load_transformers(source: ModelSource, device: str, hf_dir: Path | None = None):
    """LlamaForCausalLM over the same weights: a Meta checkpoint exported to HF's layout once
    (beside it, or at `hf_dir`), an HF directory as it is, a GGUF file through `gguf_file=`."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as e:
        raise SystemExit("this benchmark needs transformers: pip install -e '.[bench]'") from e
    if source.kind == "gguf":
        path, extra = source.path.parent, {"gguf_file": source.path.name}
    elif source.kind == "meta":
        from worker.hf_layout import write_hf_checkpoint

        path, extra = hf_dir or source.path.with_name(source.path.name + "-hf"), {}
        if not (path / "model.safetensors").exists():
            write_hf_checkpoint(source.path, path)
    else:
        path, extra = source.path, {}
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32, **extra)
    return without_eos(model).to(device).eval()


def without_eos(model):
    model.generation_config.eos_token_id = None  # every request runs to its max_tokens
    model.generation_config.pad_token_id = 0
    return model


@torch.inference_mode()
def hf_generate_batch(model, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """Greedy; left-padded to the longest prompt and run to the longest max_tokens, as a
    static batch must; each request keeps its first max_tokens[i] tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    num_new = max(max_tokens)
    out = model.generate(
        input_ids=ids.to(model.device), attention_mask=attention_mask.to(model.device),
        max_new_tokens=num_new, min_new_tokens=num_new, do_sample=False,
    )  # fmt: skip
    generated = out[:, width:].tolist()
    return [row[:n] for row, n in zip(generated, max_tokens, strict=True)]


def in_batches(generate, workload: Workload, batch_size: int) -> list[list[int]]:
    outputs: list[list[int]] = []
    for first in range(0, len(workload.prompts), batch_size):
        batch = slice(first, first + batch_size)
        outputs += generate(workload.prompts[batch], workload.max_tokens[batch])
    return outputs


class Transformers:
    name, static = "transformers", True

    def __init__(self, source: ModelSource, device: str, hf_dir: Path | None) -> None:
        self.source, self.batch_size = source, 32
        self.model = load_transformers(source, device, hf_dir)
        hf_generate_batch(self.model, [[20, 21, 22]], [2])  # warm-up

    def describe(self) -> str:
        how = "the same GGUF through `gguf_file=`" if self.source.kind == "gguf" else (
            "the same weights exported to HF's layout")  # fmt: skip
        return (f"transformers: `generate()` of `LlamaForCausalLM` reading {how}, static "
                f"batches of {self.batch_size}, left-padded")  # fmt: skip

    def resize(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def run(self, workload: Workload) -> Run:
        return timed(lambda: in_batches(self.generate, workload, self.batch_size))

    def generate(self, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        return hf_generate_batch(self.model, prompts, max_tokens)

    def close(self) -> None:
        pass


# ---- a Meta-style static batch loop ------------------------------------------------------


class DenseLlama(nn.Module):
    """Llama as `llama/generation.py` users run it: Meta's parameter names and a dense
    [batch, max_len] KV cache per layer."""

    def __init__(self, params: dict, weights: dict[str, torch.Tensor], max_len: int,
                 device: str) -> None:  # fmt: skip
        super().__init__()
        self.n_layers, self.n_heads = int(params["n_layers"]), int(params["n_heads"])
        self.n_kv_heads = int(params.get("n_kv_heads") or self.n_heads)
        self.head_dim = weights["tok_embeddings.weight"].shape[1] // self.n_heads
        self.eps = float(params.get("norm_eps", 1e-5))
        self.device = torch.device(device)
        self.w = {name: t.float().to(self.device) for name, t in weights.items()}
        theta = float(params.get("rope_theta", 10000.0))
        freqs = 1.0 / theta ** (torch.arange(0, self.head_dim, 2).double() / self.head_dim)
        angles = torch.outer(torch.arange(max_len).double(), freqs)
        self.rope = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)
        self.max_len = max_len
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, s, h, d = x.shape
        # [B, S, H, D] -> [B, S, H, D/2] complex: dims (2i, 2i+1) are one number
        xc = torch.view_as_complex(x.reshape(b, s, h, d // 2, 2))
        rotated = xc * self.rope[positions].unsqueeze(2)  # [B, S, 1, D/2] broadcast over heads
        return torch.view_as_real(rotated).reshape(b, s, h, d)

    def reset(self, batch_size: int) -> None:
        shape = (batch_size, self.max_len, self.n_kv_heads, self.head_dim)
        zeros = torch.zeros
        self.cache = [(zeros(shape, device=self.device), zeros(shape, device=self.device))
                      for _ in range(self.n_layers)]  # fmt: skip

    def forward(
        self,
        tokens: torch.Tensor,  # [B, S]
        positions: torch.Tensor,  # [B, S] rope positions (pads: 0)
        start: int,  # cache slot of tokens[:, 0]
        mask: torch.Tensor,  # [B, 1, S, start + S] True where a query may see a key
    ) -> torch.Tensor:  # [B, vocab] logits of the last position
        b, s = tokens.shape
        end = start + s
        h = self.w["tok_embeddings.weight"][tokens]  # [B, S, dim]
        for i in range(self.n_layers):
            p = f"layers.{i}."
            x = self._norm(h, self.w[p + "attention_norm.weight"])
            # [B, S, heads * D] -> [B, S, heads, D]
            q = (x @ self.w[p + "attention.wq.weight"].T).view(b, s, self.n_heads, -1)
            k = (x @ self.w[p + "attention.wk.weight"].T).view(b, s, self.n_kv_heads, -1)
            v = (x @ self.w[p + "attention.wv.weight"].T).view(b, s, self.n_kv_heads, -1)
            q, k = self._rope(q, positions), self._rope(k, positions)
            k_cache, v_cache = self.cache[i]
            k_cache[:, start:end], v_cache[:, start:end] = k, v
            # [B, L, KV, D] -> [B, KV, L, D]; enable_gqa shares each KV head without copies
            attn = F.scaled_dot_product_attention(
                q.transpose(1, 2), k_cache[:, :end].transpose(1, 2),
                v_cache[:, :end].transpose(1, 2), attn_mask=mask, enable_gqa=True,
            )  # fmt: skip
            h = h + attn.transpose(1, 2).reshape(b, s, -1) @ self.w[p + "attention.wo.weight"].T
            x = self._norm(h, self.w[p + "ffn_norm.weight"])
            gate = F.silu(x @ self.w[p + "feed_forward.w1.weight"].T)
            up = x @ self.w[p + "feed_forward.w3.weight"].T
            h = h + (gate * up) @ self.w[p + "feed_forward.w2.weight"].T
        return self._norm(h[:, -1], self.w["norm.weight"]) @ self.w["output.weight"].T

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        """Greedy, EOS ignored; each request's first `max_tokens[i]` tokens."""
        b, width, num_steps = len(prompts), max(len(p) for p in prompts), max(max_tokens)
        pads = torch.tensor([width - len(p) for p in prompts], device=self.device)  # [B]
        tokens = torch.zeros(b, width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens[row, width - len(prompt) :] = torch.tensor(prompt)
        self.reset(b)
        slots = torch.arange(width + num_steps, device=self.device)
        key_real = slots[None, :] >= pads[:, None]  # [B, L] False on pad slots
        # Pad queries see themselves only, so no row of the mask is empty.
        causal = slots[None, :width, None] >= slots[None, None, :width]  # [1, S, S]
        own = torch.eye(width, dtype=torch.bool, device=self.device)[None]
        prefill_mask = (causal & key_real[:, None, :width]) | own  # [B, S, S]
        positions = (slots[None, :width] - pads[:, None]).clamp(min=0)  # [B, S]
        outputs = [self(tokens.to(self.device), positions, 0, prefill_mask[:, None]).argmax(-1)]
        for step in range(1, num_steps):
            slot = width + step - 1
            mask = key_real[:, None, None, : slot + 1]  # [B, 1, 1, slot + 1]
            logits = self(outputs[-1][:, None], (slot - pads)[:, None], slot, mask)
            outputs.append(logits.argmax(-1))
        generated = torch.stack(outputs, dim=1).tolist()  # [B, num_steps]
        return [row[:n] for row, n in zip(generated, max_tokens, strict=True)]


class StaticLoop(Transformers):
    name, static = "static loop", True

    def __init__(self, source: ModelSource, max_len: int, device: str) -> None:
        if source.kind != "meta":
            raise SystemExit("the static loop reads a Meta checkpoint (params.json)")
        params = json.loads((source.path / "params.json").read_text())
        shard = sorted(source.path.glob("consolidated.*.pth"))[0]
        weights = torch.load(shard, map_location="cpu", weights_only=True)
        self.model, self.batch_size = DenseLlama(params, weights, max_len, device), 32
        self.model.generate([[20, 21, 22]], [2])  # warm-up

    def describe(self) -> str:
        return (f"static loop: a Meta-style static batch loop (a dense KV cache per batch, "
                f"left-padded, one forward per step), batches of {self.batch_size}")  # fmt: skip

    def generate(self, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
        return self.model.generate(prompts, max_tokens)


# ---- llama.cpp's server ------------------------------------------------------------------


class LlamaServer:
    """llama-server on loopback with continuous batching and `slots` slots (default one per
    request, each holding a whole request), on the same threads as Loom; requests go over
    loopback HTTP all at once, token ids in and out, without its prompt cache."""

    name, static = "llama.cpp", False

    def __init__(self, binary: Path, gguf: Path, slots: int, slot_len: int, port: int,
                 threads: int, draft: Path | None = None, draft_max: int = 16) -> None:  # fmt: skip
        """`draft`: its speculative decoding's draft model (`-md`), `draft_max` tokens a step."""
        self.binary, self.gguf, self.slot_len, self.port = binary, gguf, slot_len, port
        self.draft, self.draft_max = draft, draft_max
        self.threads, self.batch_size, self.process = threads, slots, None
        self.url = f"http://127.0.0.1:{port}"
        self.resize(slots)

    def describe(self) -> str:
        return (f"llama.cpp: `llama-server` on {self.gguf.name}, continuous batching, "
                f"{self.batch_size} slots, {self.threads} threads, requests over loopback HTTP "
                "all at once (token ids in and out, `cache_prompt: false`)")  # fmt: skip

    def resize(self, batch_size: int) -> None:
        self.close()
        self.batch_size = batch_size
        command = [
            str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port",
            str(self.port), "--parallel", str(batch_size), "--ctx-size",
            str(batch_size * self.slot_len), "--threads", str(self.threads), "--threads-batch",
            str(self.threads), "--batch-size", "2048", "--ubatch-size", "512", "--cont-batching",
        ]  # fmt: skip
        if self.draft is not None:
            command += ["-md", str(self.draft), "--draft-max", str(self.draft_max)]
        # Its log goes to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed with the server)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")[-2000:]
                self.close()
                raise SystemExit(f"llama-server did not start: {err}")
            time.sleep(0.2)  # polling a process start-up

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return json.load(reply).get("status") == "ok"
        except OSError:
            return False

    def complete(self, prompt: list[int], max_tokens: int) -> list[int]:
        body = {
            "prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
            "ignore_eos": True, "cache_prompt": False, "return_tokens": True,
        }  # fmt: skip
        request = urllib.request.Request(
            f"{self.url}/completion", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return list(json.load(reply)["tokens"])

    def top_logprobs(self, prompt: list[int], n: int) -> list[tuple[int, float]] | None:
        """The n likeliest next tokens after `prompt` with their logprobs (the full softmax
        of the raw logits); None where llama-server gives none (a token that is part of a
        UTF-8 character). ignore_eos: else a prefix whose likeliest token ends the text
        comes back without them."""
        body = {"prompt": prompt, "n_predict": 1, "temperature": 0.0, "n_probs": n,
                "cache_prompt": False, "ignore_eos": True}  # fmt: skip
        request = urllib.request.Request(
            f"{self.url}/completion", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=600) as reply:
            answer = json.load(reply)
        if not answer.get("completion_probabilities"):
            return None
        probs = answer["completion_probabilities"][0]["top_logprobs"]
        return [(int(p["id"]), float(p["logprob"])) for p in probs]

    def run(self, workload: Workload) -> Run:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(workload.prompts)) as pool:
            outputs = list(pool.map(self.complete, workload.prompts, workload.max_tokens))
        return time.perf_counter() - start, outputs

    def close(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        self.process = None


# ---- start-up: spawn to first token, peak memory -----------------------------------------


@dataclass(slots=True)
class Startup:
    seconds: float  # from spawning a fresh process to its first token
    peak_rss: int  # bytes


def loom_startup(model: str, **settings: object) -> Startup:
    """A fresh Python process builds Loom's engine and generates one token."""
    settings = {"device": "cpu", "num_kv_blocks": 64, "num_threads": torch.get_num_threads(),
                **settings}  # fmt: skip
    code = (
        "import resource\n"
        "from scheduler import Engine, SamplingParams\n"
        f"e = Engine.from_model_dir({model!r}, **{settings!r})\n"
        "e.generate([[20, 21, 22, 23]], SamplingParams(max_tokens=1, temperature=0))\n"
        "print('first', flush=True)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)\n"
    )
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    first = process.stdout.readline().strip()
    seconds = time.perf_counter() - start
    rss = process.stdout.readline().strip()
    if process.wait() != 0 or first != "first":
        raise RuntimeError(f"Loom's start-up run failed (exit {process.returncode})")
    return Startup(seconds, int(rss))


def llama_startup(binary: Path, gguf: Path, port: int, threads: int) -> Startup:
    """llama-server started fresh with one slot, until its first token."""
    start = time.perf_counter()
    server = LlamaServer(binary, gguf, 1, 512, port, threads)
    try:
        server.complete([20, 21, 22, 23], 1)
        seconds = time.perf_counter() - start
        for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return Startup(seconds, int(line.split()[1]) * 1024)
        return Startup(seconds, 0)
    finally:
        server.close()
