"""A request from what a caller sent: tokenized and validated before anything is queued."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from common.checks import number
from contract.sampling import InvalidFieldError, SamplingParams
from contract.step import LoraRef
from modelfiles.tokenizer import Tokenizer
from scheduler.request import Request, validate_prompt


class RequestFactory:
    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        max_n: int,
        eos_ids: tuple[int, ...],
        check_fits: Callable[[int, int], None],  # (prompt tokens, max_tokens); raises
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_n = max_n
        self.eos_ids = eos_ids
        self.check_fits = check_fits

    def make(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None,
        req_id: str | None,
        tenant: str,
        priority: int,
        lora: LoraRef | None = None,
        deadline_s: float | None = None,
    ) -> Request:
        """`deadline_s`: seconds from now by which it must finish, or None. Raises ValueError
        (InvalidFieldError naming the field) or CapacityError."""
        params = SamplingParams() if params is None else params
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must hold at least 1 token, got an empty prompt")
            prompt_token_ids = self.tokenizer.encode(prompt)  # BOS as the tokenizer says
        else:
            prompt_token_ids = list(prompt)
        validate_prompt(prompt_token_ids, params, self.vocab_size)
        if params.n > self.max_n:
            raise InvalidFieldError("n", f"n must be in [1, {self.max_n}], got {params.n}")
        self.check_fits(len(prompt_token_ids), params.max_tokens)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an integer, got {priority!r}")
        if not isinstance(tenant, str):
            raise ValueError(f"tenant must be a string, got {tenant!r}")
        if req_id is not None and not isinstance(req_id, str):
            raise ValueError(f"req_id must be a string, got {req_id!r}")
        deadline_s = _check_deadline("deadline_s", deadline_s)
        arrival_time = time.monotonic()
        return Request(
            req_id=req_id or uuid.uuid4().hex,
            prompt_token_ids=prompt_token_ids,
            params=params,
            eos_ids=self.eos_ids,
            tenant=tenant,
            priority=priority,
            arrival_time=arrival_time,
            deadline=None if deadline_s is None else arrival_time + deadline_s,
            lora=lora,
        )


_check_deadline = number(0, low_open=True, optional=True)
