"""One choice of an OpenAI response as the engine's deltas arrive: its text, finish reason
and logprobs, as a stream chunk's piece (`take`) or the whole choice (`whole`)."""

from __future__ import annotations

from frontend.http.logprobs import CompletionLogprobs, TokenTexts, chat_logprobs
from modelfiles.tokenizer import Tokenizer
from scheduler.outputs import RequestDelta

# The engine's finish reasons as OpenAI's (an abort only reaches a client on shutdown).
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


class CompletionChoice:
    """A /v1/completions choice; with `echo_text`, the prompt's text comes first (and, when
    logprobs are asked, its tokens too: the first one has no logprob)."""

    def __init__(
        self,
        index: int,
        prompt_ids: list[int],
        echo_text: str | None,
        with_logprobs: bool,
        texts: TokenTexts,
        tokenizer: Tokenizer,
    ) -> None:
        self.index = index
        self.finish_reason: str | None = None
        self._prompt_ids = prompt_ids
        self._echo_text = echo_text
        self._texts: list[str] = []
        self._logprobs = CompletionLogprobs(texts, tokenizer) if with_logprobs else None
        if self._logprobs is not None and echo_text is None:
            self._logprobs.start(prompt_ids, 0)
        self._started = False

    def take(self, delta: RequestDelta) -> dict:
        """This delta's piece of the choice, as a stream chunk carries it."""
        text = delta.text
        logprobs = None
        if not self._started:
            self._started = True
            if self._echo_text is not None:
                text = self._echo_text + text
                if self._logprobs is not None:
                    logprobs = self._echo_logprobs(delta)
        if self._logprobs is not None:
            part = self._logprobs.add(delta.token_ids, delta.logprobs, delta.top_logprobs)
            logprobs = part if logprobs is None else _joined(logprobs, part)
        self._texts.append(text)
        if delta.finish_reason is not None:
            self.finish_reason = FINISH_REASONS[delta.finish_reason]
        return {
            "index": self.index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }

    def _echo_logprobs(self, delta: RequestDelta) -> dict:
        assert self._logprobs is not None and self._echo_text is not None
        self._logprobs.start(None, 0)
        prompt_logprobs = delta.prompt_logprobs or [None] * len(self._prompt_ids)
        prompt_tops = delta.prompt_top_logprobs or [None] * len(self._prompt_ids)
        part = self._logprobs.add(self._prompt_ids, prompt_logprobs, prompt_tops)
        self._logprobs.start(self._prompt_ids, len(self._echo_text))
        return part

    def whole(self) -> dict:
        return {
            "index": self.index,
            "text": "".join(self._texts),
            "logprobs": self._logprobs.full() if self._logprobs is not None else None,
            "finish_reason": self.finish_reason,
        }


def _joined(first: dict[str, list], second: dict[str, list]) -> dict[str, list]:
    return {key: first[key] + second[key] for key in first}


class ChatChoice:
    """A /v1/chat/completions choice: the assistant's message, logprobs in the chat shape."""

    def __init__(self, index: int, with_logprobs: bool, texts: TokenTexts) -> None:
        self.index = index
        self.finish_reason: str | None = None
        self._with_logprobs = with_logprobs
        self._token_texts = texts
        self._texts: list[str] = []
        self._entries: list[dict] = []

    def opening(self) -> dict:
        """A stream's first chunk of the choice: the role, before any text."""
        return {
            "index": self.index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }

    def take(self, delta: RequestDelta) -> dict:
        logprobs = None
        if self._with_logprobs:
            entries = chat_logprobs(
                self._token_texts, delta.token_ids, delta.logprobs, delta.top_logprobs
            )
            self._entries += entries
            logprobs = {"content": entries, "refusal": None}
        self._texts.append(delta.text)
        if delta.finish_reason is not None:
            self.finish_reason = FINISH_REASONS[delta.finish_reason]
        return {
            "index": self.index,
            "delta": {"content": delta.text} if delta.text else {},
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }

    def whole(self) -> dict:
        logprobs = {"content": self._entries, "refusal": None} if self._with_logprobs else None
        return {
            "index": self.index,
            "message": {"role": "assistant", "content": "".join(self._texts)},
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }
