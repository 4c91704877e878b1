"""Failed engine steps in a row, and when they are too many.

A step fails when the worker raises while it is still available (a fault in the forward pass,
a bug in a step's processing) or when the step itself raises: that step's requests fail with
INTERNAL and serving goes on. A fault that persists would fail every request sent from then
on, so after `limit` failed steps in a row the engine loop stops and says why (health turns
NOT_SERVING, new calls get UNAVAILABLE). Any step that succeeds resets the count, so a fault
that stops in time costs only the requests it touched. An unreachable worker does not count:
it is reconnecting, and health says so meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineStoppedError(RuntimeError):
    """Too many engine steps failed in a row: the engine loop stops."""


@dataclass(slots=True)
class StepFailures:
    limit: int  # failed steps in a row that stop the loop; 0 never stops it
    consecutive: int = 0

    def succeeded(self) -> None:
        self.consecutive = 0

    def failed(self, error: str) -> None:
        """Count one failed step; EngineStoppedError, naming it, once the limit is reached."""
        self.consecutive += 1
        if self.limit and self.consecutive >= self.limit:
            raise EngineStoppedError(
                f"{self.consecutive} engine steps failed in a row (max_step_failures "
                f"{self.limit}); the last: {error}"
            )
