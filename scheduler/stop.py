"""Stop strings, matched on the detokenized text across token boundaries."""

from __future__ import annotations


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
