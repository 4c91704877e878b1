"""The response objects of the OpenAI API around their choices: completions, chat
completions, their stream chunks, usage and the model list."""

from __future__ import annotations

from scheduler.outputs import Usage


def usage_json(usages: list[Usage]) -> dict:
    """The usage of a response: each prompt counted once, every sequence's tokens."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(u.cached_prompt_tokens for u in usages)},
    }
    proposed = sum(u.spec_proposed_tokens for u in usages)
    if proposed:  # speculative decoding's proposals, as OpenAI counts predicted outputs
        accepted = sum(u.spec_accepted_tokens for u in usages)
        usage["completion_tokens_details"] = {
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": proposed - accepted,
        }
    return usage


class Envelope:
    """What every object of one response shares: its id, time, model and kind."""

    def __init__(self, response_id: str, created: int, model: str, chat: bool) -> None:
        self.response_id = response_id
        self.created = created
        self.model = model
        self.chat = chat

    def _head(self, kind: str) -> dict:
        return {
            "id": self.response_id,
            "object": kind,
            "created": self.created,
            "model": self.model,
        }

    def whole(self, choices: list[dict], usages: list[Usage]) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._head(kind), "choices": choices, "usage": usage_json(usages)}

    def chunk(self, choices: list[dict], include_usage: bool) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body = {**self._head(kind), "choices": choices}
        if include_usage:
            body["usage"] = None  # every chunk has the key; the last one after all the choices
        return body

    def usage_chunk(self, usages: list[Usage]) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": usage_json(usages)}


def model_list(model: str, created: int, engine, loras: list[str]) -> dict:
    """OpenAI's model list; `max_model_len` as vLLM adds it, and what a load generator needs
    to draw token-id prompts (the vocabulary and its special ids). Then the LoRA adapters
    `loras`, each with its base model as `parent`, as vLLM lists them."""
    info = engine.info
    base = {
        "object": "model",
        "created": created,
        "owned_by": "loom",
        "max_model_len": engine.max_model_len,
        "vocab_size": info.vocab_size,
        "bos_token_id": info.bos_id,
        "eos_token_ids": list(engine.eos_ids),
        # What a request leaving these fields out gets (generation_config.json).
        "default_sampling": dict(engine.tokenizer.sampling_defaults),
    }
    adapters = [{"id": name, **base, "parent": model} for name in loras]
    return {"object": "list", "data": [{"id": model, **base}, *adapters]}
