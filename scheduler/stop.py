"""When a request stops: stop strings matched on the text across token boundaries, and the
one check that decides every finish."""

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
