"""JAX steps compiled ahead of time, several at once, and JAX's persistent compilation cache.

XLA compiles in native code that releases the GIL, so the sweep compiles a window of upcoming
points in a thread pool (lowering stays in the main thread) and times them only after the whole
window is compiled: no compilation runs beside a timed call (:class:`Window`). The window asks
each upcoming point's workload for its :class:`~bench.harness.case.Case` and builds its task
once; the point's run takes what was prepared. The on-disk cache lets a second sweep skip most
compilation. No JAX import at module level: options and shards are planned before it loads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.harness.case import Case, Task
from bench.harness.limit import PointTimeout, time_limit
from bench.harness.options import Settings
from bench.harness.predict import Planner, dense_cost_key
from bench.harness.telemetry import available_bytes

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


# The points of a compile-ahead window: this many per compiling thread (so threads that finish
# early find work), their predicted memory together within this fraction of the free memory
# (a window holds their weights and inputs until its points run).
WINDOW_PER_WORKER = 2
WINDOW_MEMORY_FRACTION = 0.5
# Threads compiling JAX steps for one GPU at once, at most: XLA autotunes its GPU kernels by
# timing them on the card, so many compilations at once would time each other and could bake
# noisy choices into the persistent cache.
GPU_COMPILE_WORKERS = 4


@dataclass
class Prepared:
    """A point built and compiled ahead of its run: ``info`` (its identity, as the window
    found it), its task, ``compiled`` (step, compile_s, static peak), ``how`` (compile_ahead,
    compile_cache) and ``build_s`` (part of its wall time), or the ``error`` its build or
    compilation raised, re-raised in its run."""

    info: dict[str, Any]
    task: Task | None = None
    compiled: tuple | None = None
    how: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    build_s: float = 0.0

    @property
    def compile_s(self) -> float:
        return self.compiled[1] if self.compiled else 0.0


class Window:
    """Compile-ahead for one session: ``identify(case)`` gives a point's extra_info identity;
    ``planner`` says which points the budget, memory or time would skip (left to their run)."""

    def __init__(self, settings: Settings, planner: Planner, identify: Callable[[Case], dict]):
        self.settings = settings
        self.planner = planner
        self._identify = identify
        self._prepared: dict[str, Prepared] = {}  # by the point's fullname
        self._seen: set[str] = set()  # points a window has considered
        self._pools: dict[bool, ThreadPoolExecutor] = {}  # by "on a GPU"

    def wants(self, fullname: str) -> bool:
        """Whether reaching point ``fullname`` should compile a window from it: compiling
        ahead is on, and no window has considered this point yet."""
        return self.settings.compile_workers > 0 and fullname not in self._seen

    def take(self, fullname: str) -> Prepared | None:
        """What a window prepared for ``fullname`` (once), or None."""
        return self._prepared.pop(fullname, None)

    def compile(self, upcoming: Iterable[tuple[str, Callable[[], Case]]]) -> int:
        """Build and compile a window of the ``upcoming`` points (fullname, its workload's
        ``case``) ahead of their runs; returns its size. It ends at a point whose steps are not
        pure, at a dense point whose time prediction waits on one in it, past its memory or
        worker bounds; points to be skipped are left to their run. Every compilation finishes
        before this returns: none overlaps a timed call."""
        window: list[tuple[str, Case, dict[str, Any]]] = []
        costs, need_total, ahead_s = set(), 0, 0.0
        for considered, (fullname, describe) in enumerate(upcoming):
            if self.planner.left_out(fullname, ahead_s):  # its run records why
                break
            try:
                case = describe()
            except Exception:  # the point's own run meets this again, and records it
                self._seen.add(fullname)
                break
            info = self._identify(case)
            cost = dense_cost_key(info)
            free, _ = available_bytes(case.backend)
            need_total += case.need_bytes or 0
            full = considered and (
                (cost is not None and cost in costs)
                or (free is not None and need_total > WINDOW_MEMORY_FRACTION * free)
                or len(window) >= WINDOW_PER_WORKER * self._workers(case.backend)
            )
            if full:
                break
            self._seen.add(fullname)  # reaching it needs no window of its own
            if not case.backend.pure_steps:  # torch: compiled in its own run, if at all
                break
            if not self.planner.skip_reason(case.backend, info, case.need_bytes):
                window.append((fullname, case, info))
                costs.add(cost)
                ahead_s += self.planner.predicted_s(fullname)
        size = len(window)
        pending = {name: self._lower(case, info, size) for name, case, info in window}
        futures = [future for _, future in pending.values() if future is not None]
        # Each compilation counts against its point's limit, and the budget's end stops them
        # all: none may hold the window longer.
        limit = self.settings.timeout_s or None
        share = self.planner.share_left(window[0][0]) if window else None
        if share is not None and (limit is None or share < limit):
            limit = max(share, 1e-3)
        _, late = wait(futures, timeout=limit)
        for prepared, future in pending.values():
            if future in late:
                prepared.error = PointTimeout(
                    f"its compilation ahead ran past {limit:g} s (its limit, or the budget's end)"
                )
        self._prepared |= {name: prepared for name, (prepared, _) in pending.items()}
        return size

    def _workers(self, backend) -> int:
        """Threads compiling ahead for ``backend``'s device (GPU_COMPILE_WORKERS on a GPU)."""
        on_gpu = backend.device.startswith("cuda")
        workers = self.settings.compile_workers
        return min(workers, GPU_COMPILE_WORKERS) if on_gpu else workers

    def _lower(self, case: Case, info: dict[str, Any], window: int):
        """(Prepared, the future of its compilation or None): the task built and lowered here,
        under the per-point limit, and compiled in the pool; a failure is kept for its run."""
        backend, start = case.backend, time.perf_counter()
        try:
            with time_limit(self.settings.timeout_s):
                task = case.make_task()
                variant = task.variant or backend.default_variant
                rest = backend.lower_step(task.fn, task.args, variant)
        except (Exception, PointTimeout) as exc:
            return Prepared(info, error=exc, build_s=time.perf_counter() - start), None
        on_gpu = backend.device.startswith("cuda")
        if on_gpu not in self._pools:
            self._pools[on_gpu] = ThreadPoolExecutor(
                self._workers(backend), thread_name_prefix="hollowbench-compile"
            )
        prepared = Prepared(info, task=task, build_s=time.perf_counter() - start)
        return prepared, self._pools[on_gpu].submit(_compile_rest, rest, prepared, window)

    def close(self) -> None:
        """Stop the compile pools (idle, but for a compilation that ran past its limit)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def _compile_rest(rest: Callable[[], tuple], prepared: Prepared, window: int) -> None:
    """The pool's job: finish one compilation (a backend's ``lower_step`` thunk) in a window of
    ``window`` points, noting whether the persistent cache served it; a failure becomes the
    point's to record."""
    try:
        with cache_status() as cache:
            prepared.compiled = rest()
        prepared.how = {"compile_ahead": window} | cache
    except Exception as exc:
        prepared.error = exc
