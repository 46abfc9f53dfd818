"""Faults injected into points, for the harness's own tests (``--bench-inject`` or
``$HOLLOWBENCH_INJECT``, e.g. ``oom=*dense_loop*,timeout=*-d8-*,delay=0.5``)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# noise=GLOB: seconds slept in the first warm-up call after the one-off call and in the first
# NOISE_CALLS timed calls of the first measurement of a matching point.
NOISE_S = 0.1
NOISE_CALLS = 2
KEYS = ("oom", "timeout", "error", "noise", "delay")


@dataclass(frozen=True)
class Faults:
    """Faults for points whose test name matches a glob: raise MemoryError (``oom``), sleep
    past the limit (``timeout``), raise RuntimeError (``error``), a burst of load in the timed
    calls (``noise``, :meth:`disturbance`); ``delay``: seconds slept before every point."""

    oom: str | None = None
    timeout: str | None = None
    error: str | None = None
    delay: float = 0.0
    noise: str | None = None

    def inject(self, name: str, timeout_s: float) -> None:
        """At the start of point ``name``'s measured part (under its limit of ``timeout_s``)."""
        time.sleep(self.delay)
        if self.oom and fnmatch.fnmatch(name, self.oom):
            raise MemoryError(f"injected by HOLLOWBENCH_INJECT oom={self.oom}")
        if self.error and fnmatch.fnmatch(name, self.error):
            raise RuntimeError(f"injected by HOLLOWBENCH_INJECT error={self.error}")
        if self.timeout and fnmatch.fnmatch(name, self.timeout):
            time.sleep(2 * timeout_s + 1)

    def disturbance(self, name: str) -> Callable[[str, int], None] | None:
        """noise=GLOB: a deterministic burst of load in a matching point (timing's hook)."""
        if not self.noise or not fnmatch.fnmatch(name, self.noise):
            return None

        def disturb(phase: str, index: int) -> None:
            if (phase == "warmup" and index == 0) or (phase == "timed" and index < NOISE_CALLS):
                time.sleep(NOISE_S)

        return disturb


def parse(raw: str) -> Faults:
    """``oom=GLOB,timeout=GLOB,error=GLOB,noise=GLOB,delay=S`` (any subset) -> Faults;
    ValueError naming what is accepted."""
    values: dict[str, Any] = {}
    for word in (w.strip() for w in raw.split(",")):
        if not word:
            continue
        key, sep, value = word.partition("=")
        if not sep or key not in KEYS:
            raise ValueError(
                f"{word!r} is not oom=GLOB, timeout=GLOB, error=GLOB, noise=GLOB or delay=S"
            )
        if key == "delay":
            try:
                values[key] = float(value)
            except ValueError:
                raise ValueError(f"delay={value!r} is not a number of seconds") from None
            if not values[key] >= 0:
                raise ValueError(f"delay={value!r} must be >= 0")
        else:
            values[key] = value
    return Faults(**values)
