"""When a request stops: stop strings matched on the text across token boundaries, and the
one check that decides every natural finish.

Every request ends through `Request.finish`, called from these places only, one per cause:
- `check_stop` below decides the natural ends (EOS, stop ids, stop strings: `stop`; max_tokens
  and the model length: `length`), called by `Scheduler.update` as each token arrives;
- the caller: `Scheduler.abort_request` (`abort`; a sequence of an n > 1 request never
  scheduled is aborted by scheduler/fanout.py, holding nothing to free);
- the worker: `Scheduler.update` for a row the worker failed alone or a request it left with
  nothing to sample, `Scheduler.fail_step` for a failed step, `Scheduler.worker_lost` for a
  worker gone or reconnected (`error`, the last as unavailable);
- the engine itself: scheduler/step_results.py when detokenizing a token fails, and
  `Engine` when admitting a request fails (`error`);
- the clock: `Scheduler.schedule` (`_end_missed_deadlines`) for a request that can no longer
  finish by its deadline (scheduler/deadlines.py says when), before the step is built, so it
  never reaches the worker again (`deadline`).
All but the never-scheduled sequences go through `Scheduler._finish`, which also frees the
request's blocks and tells the worker to drop it. The frontend ends streams on its own only
when the engine loop has stopped (frontend/async_engine.py).
"""

from __future__ import annotations

from scheduler.request import Request, RequestStatus


class StopStringMatcher:
    """Finds the first stop string in a growing text.

    A stop string may arrive split over several tokens, so the last `holdback` characters of
    the text are not streamed until the next token shows they do not begin a stop string.
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop = list(stop)
        self.holdback = max((len(s) for s in stop), default=1) - 1

    def find(self, text: str, num_checked: int) -> int:
        """Index of the earliest stop string in `text`, or -1. Text before `num_checked` was
        already searched, so a match can only end after it."""
        start = max(0, num_checked - self.holdback)
        best = -1
        for s in self.stop:
            i = text.find(s, start)
            if i >= 0 and (best < 0 or i < best):
                best = i
        return best


def check_stop(
    req: Request, max_model_len: int, stop_string_found: bool = False
) -> RequestStatus | None:
    """Whether a request is finished now that its newest output token is appended: the one
    place every finish by EOS, stop token ids, stop strings and lengths is decided.

    EOS, stop ids and stop strings (found by the output processor) count only once
    `min_tokens` are out, and they beat the length limits when both apply to the same token.
    """
    output_ids = req.output_token_ids
    num_output = len(output_ids)
    if num_output >= req.params.min_tokens:
        last = output_ids[-1]
        if stop_string_found or last in req.end_ids:
            return RequestStatus.FINISHED_STOPPED
    if num_output >= req.params.max_tokens or len(req.all_token_ids) >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
