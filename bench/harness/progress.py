"""Points done out of the total, with an ETA, as plain lines (safe when output is not a TTY)."""

from __future__ import annotations

import time
from collections.abc import Callable


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts finished points and writes a line through ``write`` at most every ``every_s``
    seconds, and once at the end. The ETA assumes the remaining points cost the mean so far."""

    def __init__(
        self,
        total: int,
        write: Callable[[str], None],
        every_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.done = total, 0
        self._write, self._every, self._clock = write, every_s, clock
        self._start = clock()
        self._last = self._start

    def tick(self) -> None:
        self.done += 1
        now = self._clock()
        if self.done >= self.total or now - self._last >= self._every:
            self._last = now
            elapsed, left = now - self._start, max(self.total - self.done, 0)
            pct = 100 * self.done / self.total if self.total else 100
            self._write(
                f"[hollowbench] {self.done}/{self.total} points ({pct:.0f}%), "
                f"{_clock(elapsed)} elapsed, ETA {_clock(elapsed / self.done * left)}"
            )
