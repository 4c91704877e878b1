"""Turns the scheduler's updated requests into per-request deltas: text, tokens, logprobs,
prompt logprobs for echo, finish reason and usage. Stop strings are looked for here, on the
text, since only here is the text known; `check_stop` decides what a match means."""

from __future__ import annotations

from modelfiles.tokenizer import Tokenizer
from scheduler.detokenizer import IncrementalDetokenizer
from scheduler.outputs import RequestDelta, Usage
from scheduler.request import Request
from scheduler.stop import StopStringMatcher


class RequestOutputState:
    """What one request has streamed so far."""

    def __init__(self, req: Request, tokenizer: Tokenizer) -> None:
        self.req = req
        self._detokenizer = IncrementalDetokenizer(tokenizer, req.prompt_token_ids)
        self._stop = StopStringMatcher(req.params.stop) if req.params.stop else None
        self.text = ""  # output text so far, cut before a stop string once one matched
        self._stopped = False  # a stop string matched; nothing after it is text
        self._num_tokens_scanned = 0
        self._num_text_sent = 0
        self._num_tokens_sent = 0
        self._prompt_logprobs_sent = not req.params.echo

    def scan(self, final: bool) -> bool:
        """Detokenize the tokens added since the last scan (flushing a partial character when
        `final`) and look for a stop string in the new text; True when one matched (the text
        is then cut before it). Called by `Scheduler.update`, which decides the finish."""
        req = self.req
        new_ids = req.output_token_ids[self._num_tokens_scanned :]
        self._num_tokens_scanned = len(req.output_token_ids)
        if self._stopped:
            return True
        num_checked = len(self.text)
        self.text += self._detokenizer.add(new_ids, final=final)
        if self._stop is None or len(req.output_token_ids) < req.params.min_tokens:
            return False
        i = self._stop.find(self.text, num_checked)
        if i >= 0:
            self.text = self.text[:i]
            self._stopped = True
        return self._stopped

    def next_delta(self) -> RequestDelta:
        """What the request gained since the last delta (text as far as scanned)."""
        req = self.req
        params = req.params
        new_ids = req.output_token_ids[self._num_tokens_sent :]
        start = self._num_tokens_sent
        self._num_tokens_sent = len(req.output_token_ids)
        finished = req.is_finished
        end = len(self.text)
        if not finished and self._stop is not None:
            end = max(end - self._stop.holdback, self._num_text_sent)
        text = self.text[self._num_text_sent : end]
        delta = RequestDelta(req.req_id, text=text, token_ids=new_ids)
        self._num_text_sent = end
        if params.logprobs:
            delta.logprobs = req.logprobs[start : start + len(new_ids)]
        if params.top_logprobs:
            delta.top_logprobs = req.top_logprobs[start : start + len(new_ids)]
        if not self._prompt_logprobs_sent and (new_ids or finished):
            self._prompt_logprobs_sent = True
            delta.prompt_token_ids = list(req.prompt_token_ids)
            delta.prompt_logprobs = list(req.prompt_logprobs)
            if req.prompt_top_logprobs is not None:
                delta.prompt_top_logprobs = list(req.prompt_top_logprobs)
        if finished:
            delta.finish_reason = req.finish_reason
            delta.error = req.error
            delta.unavailable = req.unavailable
            delta.usage = usage_of(req)
            delta.preemptions = dict(req.preemptions)
        return delta


def usage_of(req: Request) -> Usage:
    return Usage(
        prompt_tokens=len(req.prompt_token_ids),
        completion_tokens=len(req.output_token_ids),
        cached_prompt_tokens=max(req.num_cached_prompt_tokens, 0),
        spec_proposed_tokens=req.num_spec_proposed,
        spec_accepted_tokens=req.num_spec_accepted,
    )


def final_delta(req: Request) -> RequestDelta:
    """The closing delta of a request finished without new output (abort, error)."""
    return RequestDelta(
        req.req_id,
        finish_reason=req.finish_reason,
        error=req.error,
        unavailable=req.unavailable,
        usage=usage_of(req),
        preemptions=dict(req.preemptions),
    )
