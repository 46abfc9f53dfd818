"""JAX steps compiled ahead of time, several at once, and JAX's persistent compilation cache.

XLA compiles in native code that releases the GIL, so the sweep compiles a window of upcoming
points in a thread pool (lowering stays in the main thread) and times them only after the whole
window is compiled: no compilation runs beside a timed call (:meth:`Sweep.compile_ahead
<bench.harness.sweep.Sweep.compile_ahead>`). The on-disk cache lets a second sweep skip most
compilation. No JAX import at module level: options and shards are planned before it loads.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# JAX's own setting names; a user's environment wins over ours.
CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
ENABLE_ENV = "JAX_ENABLE_COMPILATION_CACHE"
# JAX writes only compilations slower than this (default 1 s); a cached entry loads in ~10 ms
# where the quick preset's CPU compilations take 0.2-1 s, so every one is worth keeping.
MIN_COMPILE_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
CACHE_EVENTS = "/jax/compilation_cache/"

_seen = threading.local()  # the cache events of the compilation running on this thread
_listening = False


def use_jax_cache(directory: str | None) -> str | None:
    """Point JAX's persistent compilation cache at ``directory``, or turn it off (None), through
    the environment JAX reads at import (or its config, if imported); returns the directory in
    use (the user's own JAX_COMPILATION_CACHE_DIR wins)."""
    if directory is None:
        os.environ[ENABLE_ENV] = "false"
    else:
        os.environ.setdefault(CACHE_ENV, directory)
        os.environ.setdefault(MIN_COMPILE_ENV, "0")
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_enable_compilation_cache", directory is not None)
        if directory is not None:
            jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
            min_s = float(os.environ[MIN_COMPILE_ENV])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", min_s)
    return os.environ[CACHE_ENV] if directory is not None else None


def _listen(event: str, **_: Any) -> None:
    events = getattr(_seen, "events", None)
    if events is not None and event.startswith(CACHE_EVENTS):
        events.add(event.removeprefix(CACHE_EVENTS))


@contextmanager
def cache_status() -> Iterator[dict[str, str | None]]:
    """Around one compilation on this thread: ``{"compile_cache": "hit" | "miss" | None}`` from
    JAX's monitoring events (None: the cache was not consulted, or JAX is not loaded)."""
    global _listening
    found: dict[str, str | None] = {"compile_cache": None}
    if "jax" not in sys.modules:
        yield found
        return
    if not _listening:
        import jax.monitoring

        jax.monitoring.register_event_listener(_listen)
        _listening = True
    _seen.events = set()
    try:
        yield found
    finally:
        events, _seen.events = _seen.events, None
        if "cache_hits" in events:
            found["compile_cache"] = "hit"
        elif "compile_requests_use_cache" in events:
            found["compile_cache"] = "miss"


class Recorder:
    """The sweep as a workload's ``run`` sees it, but ``run`` records its arguments: what the
    point would measure, built by the sweep's own ``backend`` and ``memo``."""

    def __init__(self, sweep):
        self._sweep = sweep
        self.calls: list[tuple] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sweep, name)

    def run(self, benchmark, backend, make_task, extra_info, *, need_bytes=None) -> None:
        self.calls.append((backend, make_task, extra_info, need_bytes))
