"""The sweep: session state, and :meth:`Sweep.run`, through which every benchmark point goes.

``run`` skips a point predicted not to fit (memory, or a dense method's time from a smaller d);
under a per-point limit (SIGALRM) builds and compiles its task (JAX points usually in a window
compiled ahead, bench/harness/ahead.py, their compile time charged to their limit); times it
(bench/harness/timing.py); reads peak memory, energy, conditions and the task's error; records
OOMs and time-outs as statuses (other failures fail the test); journals every outcome at once.
"""

from __future__ import annotations

import fnmatch
import gc
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.harness import ahead, plan
from bench.harness.journal import Journal
from bench.harness.options import OptionError, Settings
from bench.harness.telemetry import (
    Conditions,
    EnergyMeter,
    PeakMemory,
    available_bytes,
    cpu_name,
)
from bench.harness.timing import RULE, measure, rounds_for, warm_up
from bench.schema import INFO_KEYS, STATS
from impls import DENSE_METHODS

# Predictions are rough. On the CPU a point that does not fit summons the OOM killer, which
# ends the sweep: it must be predicted to fit in 80% of the free RAM. On a GPU an OOM is caught
# and recorded, so only points predicted to need over 1.5x the free memory are not tried.
FIT_FRACTION = {"cpu": 0.8, "gpu": 1.5}
OOM_MARKERS = ("resource_exhausted", "out of memory", "can't allocate memory", "failed to allocate")
# HOLLOWBENCH_INJECT noise=GLOB: seconds slept in the first warm-up call after the one-off call
# and in the first NOISE_CALLS timed calls of the first measurement of a matching point.
NOISE_S = 0.1
NOISE_CALLS = 2
# A dense method's point is skipped when its predicted time, its first call and the fewest
# rounds a slow call gets, exceeds this fraction of the per-point limit: it would time out.
TIME_FRACTION = 0.5
# The points of a compile-ahead window: this many per compiling thread (so threads that finish
# early find work), their predicted memory together within this fraction of the free memory
# (a window holds their weights and inputs until its points run).
WINDOW_PER_WORKER = 2
WINDOW_MEMORY_FRACTION = 0.5
# Threads compiling JAX steps for one GPU at once, at most: XLA autotunes its GPU kernels by
# timing them on the card, so many compilations at once would time each other and could bake
# noisy choices into the persistent cache.
GPU_COMPILE_WORKERS = 4
# What a dense point's time is predicted from: the same computation at a smaller d.
COST_KEYS = ("workload", "backend", "device", "method", "variant", "model", "mode", "batch", "k",
             "n_probes", "n_matvecs")  # fmt: skip


class PointTimeout(BaseException):
    """A point ran past the per-point time limit. A BaseException, so that libraries' ``except
    Exception`` blocks (torch's lazy imports) cannot swallow it and run on half-initialised."""


@dataclass
class Task:
    """What one point times: ``fn(*args)`` returns the outputs to wait for (JAX: pure and
    jittable). ``check(outputs, step)`` -> (error, error_kind) from a warm-up call's outputs;
    ``step`` is the callable timed (JAX: the compiled executable). ``measure(outputs, step)``,
    run before the check and kept if it fails, and ``info``, known at build, are extra_info
    entries. ``variant``: how the backend runs ``fn`` (``impls.VARIANTS``; None: its default)."""

    fn: Callable[..., Any]
    args: tuple
    check: Callable[[Any, Callable[..., Any]], tuple[float | None, str | None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    measure: Callable[[Any, Callable[..., Any]], dict[str, Any]] | None = None


@dataclass
class Prepared:
    """A point built and compiled ahead of its run: its task, ``compiled`` (step, compile_s,
    static peak), ``info`` (compile_ahead, compile_cache) and ``build_s`` (part of its wall
    time), or the ``error`` its build or compilation raised, re-raised in its run."""

    task: Task | None = None
    compiled: tuple | None = None
    info: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    build_s: float = 0.0

    @property
    def compile_s(self) -> float:
        return self.compiled[1] if self.compiled else 0.0


IMPORT_FRAMES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
IMPORT_RETRY_S = 0.05


@contextmanager
def time_limit(seconds: float, why: str | None = None) -> Iterator[None]:
    """Raise PointTimeout in the main thread after ``seconds`` (0: no limit). SIGALRM stops a
    long native call (an XLA compilation) only when it returns to Python; an import in
    progress is let finish (the alarm re-arms), so no module is left half-initialised."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def on_alarm(signum, frame):
        while frame is not None:
            if frame.f_code.co_filename in IMPORT_FRAMES:  # importing: re-arm
                signal.setitimer(signal.ITIMER_REAL, IMPORT_RETRY_S)
                return
            frame = frame.f_back
        raise PointTimeout(f"ran past {why or f'the per-point limit of {seconds:g} s'}")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(exc: BaseException) -> str:
    """ "timeout", "oom" (MemoryError, torch.cuda.OutOfMemoryError, XLA RESOURCE_EXHAUSTED and
    allocator failures) or "error"."""
    if isinstance(exc, PointTimeout):
        return "timeout"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom"
    text = str(exc).lower()
    return "oom" if any(marker in text for marker in OOM_MARKERS) else "error"


def describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class Sweep:
    """One pytest session's sweep: settings, backends, the journal and the points not run."""

    def __init__(self, settings: Settings, journal: Journal):
        self.settings = settings
        self.journal = journal
        self.not_run: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._backends: dict[tuple[str, str], Any] = {}
        self._memo: dict[Any, Any] = {}
        self.rule = RULE  # the noise test (bench/harness/timing.py)
        self._started = time.perf_counter()  # a budget counts from here
        self._deadline: float | None = None  # the running point's time limit (perf_counter)
        self._calls: defaultdict[tuple, list[tuple[int, float, float]]] = defaultdict(list)
        self._prepared: dict[str, Prepared] = {}  # by the point's fullname
        self._seen_ahead: set[str] = set()  # points a compile-ahead window has considered
        self._pools: dict[bool, ThreadPoolExecutor] = {}  # by "on a GPU"
        self.plan: plan.Plan | None = None  # under --bench-budget

    def discover(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """(devices each installed backend will use, reason each requested one is missing);
        OptionError when a requested device is visible to no backend."""
        found, missing = {}, {}
        for name in self.settings.backends:
            try:
                visible = self.backend(name, "cpu").devices()
            except ImportError as exc:
                missing[name] = f"{name} backend unavailable: {exc}"
                continue
            wanted = self.settings.devices or visible
            found[name] = tuple(d for d in wanted if d in visible)
        if self.settings.devices:
            seen = {d for devices in found.values() for d in devices}
            unseen = [d for d in self.settings.devices if d not in seen]
            if unseen:
                raise OptionError(
                    f"--bench-devices: {', '.join(unseen)} not visible to "
                    f"{', '.join(found) or 'any installed backend'}"
                )
        return found, missing

    def backend(self, name: str, device: str):
        """The cached ``impls`` backend ``name`` on ``device``, at the requested precision."""
        key = (name, device)
        if key not in self._backends:
            from impls import load_backend

            backend = load_backend(name, device)
            backend.set_matmul_precision(self.settings.matmul_precision)
            self._backends[key] = backend
        return self._backends[key]

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key per session (e.g. a dense reference shared by methods)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def order(self, candidates: list[plan.Candidate]) -> list[plan.Candidate]:
        """The points in run order; under a budget, planned (bench/harness/plan.py: the plan
        is journaled) from the time it has left, less RESERVE for pytest's own end."""
        s = self.settings
        if not s.sweep_budget_s:
            return plan.run_order(candidates)
        model = plan.CostModel.from_journals(
            s.costs, timing=s.timing, timeout_s=s.timeout_s, cnf_budget_s=s.cnf_budget_s
        )
        left = (1 - plan.RESERVE) * s.sweep_budget_s - (time.perf_counter() - self._started)
        self.plan = plan.make_plan(candidates, left, model)
        self.plan.budget_s = s.sweep_budget_s
        self.plan.start(time.perf_counter(), left)
        planned = [c.id for c in self.plan.order if c.id in self.plan.planned]
        self.journal.append({"kind": "plan", **self.plan.describe(), "planned_ids": planned})
        return self.plan.order

    def _left_out(self, fullname: str, ahead_s: float = 0.0) -> str | None:
        """Why the budget leaves this point out now, or None (no budget, or it fits)."""
        if self.plan is None:
            return None
        return self.plan.admit(fullname, time.perf_counter(), ahead_s)

    def _share_left(self, fullname: str) -> float | None:
        """Seconds left of the point's share of the budget (None: no budget)."""
        return self.plan.time_left(fullname, time.perf_counter()) if self.plan else None

    def wants_ahead(self, fullname: str) -> bool:
        """Whether reaching point ``fullname`` should compile a window from it: compiling
        ahead is on, and no window has considered this point yet."""
        return self.settings.compile_workers > 0 and fullname not in self._seen_ahead

    def compile_ahead(
        self, upcoming: Iterable[tuple[str, Callable[[ahead.Recorder], None]]]
    ) -> int:
        """Build and compile a window of the ``upcoming`` points (fullname, describe: runs the
        point's workload with the recorder given) ahead of their runs; returns its size. It ends
        at a point whose steps are not pure, at a dense point whose time prediction waits on
        one in it, past its memory or worker bounds; points to be skipped are left to their
        run. Every compilation finishes before this returns: none overlaps a timed call."""
        window: list[tuple[str, Any, Callable[[], Task]]] = []
        costs, need_total, ahead_s = set(), 0, 0.0
        for considered, (fullname, describe) in enumerate(upcoming):
            if self._left_out(fullname, ahead_s):  # its run records why
                break
            recorder = ahead.Recorder(self)
            try:
                describe(recorder)
                ((backend, make_task, extra_info, need_bytes),) = recorder.calls
            except Exception:  # the point's own run meets this again, and records it
                self._seen_ahead.add(fullname)
                break
            info = self._identify(backend, extra_info, need_bytes)
            cost = _cost_key(info) if info.get("method") in DENSE_METHODS else None
            free, _ = available_bytes(backend)
            need_total += need_bytes or 0
            full = considered and (
                (cost is not None and cost in costs)
                or (free is not None and need_total > WINDOW_MEMORY_FRACTION * free)
                or len(window) >= WINDOW_PER_WORKER * self._workers(backend)
            )
            if full:
                break
            self._seen_ahead.add(fullname)  # reaching it needs no window of its own
            if not backend.pure_steps:  # torch: compiled in its own run, if at all
                break
            if not (self._wont_fit(backend, need_bytes) or self._too_slow(info)):
                window.append((fullname, backend, make_task))
                costs.add(cost)
                if self.plan is not None:
                    ahead_s += self.plan.predicted.get(fullname, 0.0)
        size = len(window)
        pending = {
            name: self._lower(backend, make_task, size) for name, backend, make_task in window
        }
        futures = [future for _, future in pending.values() if future is not None]
        # Each compilation counts against its point's limit, and the budget's end stops them
        # all: none may hold the window longer.
        limit = self.settings.timeout_s or None
        share = self._share_left(window[0][0]) if window else None
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

    def _lower(self, backend, make_task: Callable[[], Task], window: int):
        """(Prepared, the future of its compilation or None): the task built and lowered here,
        under the per-point limit, and compiled in the pool; a failure is kept for its run."""
        start = time.perf_counter()
        try:
            with time_limit(self.settings.timeout_s):
                task = make_task()
                variant = task.variant or backend.default_variant
                rest = backend.lower_step(task.fn, task.args, variant)
        except (Exception, PointTimeout) as exc:
            return Prepared(error=exc, build_s=time.perf_counter() - start), None
        on_gpu = backend.device.startswith("cuda")
        if on_gpu not in self._pools:
            self._pools[on_gpu] = ThreadPoolExecutor(
                self._workers(backend), thread_name_prefix="hollowbench-compile"
            )
        prepared = Prepared(task=task, build_s=time.perf_counter() - start)
        return prepared, self._pools[on_gpu].submit(_compile_rest, rest, prepared, window)

    def close(self) -> None:
        """Stop the compile pools (idle, but for a compilation that ran past its limit)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def run(
        self,
        benchmark,
        backend,
        make_task: Callable[[], Task],
        extra_info: dict[str, Any],
        *,
        need_bytes: int | None = None,
    ) -> None:
        """Measure and record the task ``make_task()`` builds as one point (``extra_info``: its
        identity, SCHEMA.md keys; ``need_bytes``: its predicted memory). A point not run is
        recorded, then skipped (oom, timeout, predicted not to fit) or re-raised (errors)."""
        info = self._identify(backend, extra_info, need_bytes)
        prepared = self._prepared.pop(benchmark.fullname, None)
        left_out = None if prepared else self._left_out(benchmark.fullname)
        if left_out:  # before the backend's warm-up: a left-out point costs nothing
            self._finish(benchmark, info, "skipped", left_out, time.perf_counter())
            pytest.skip("skipped: the budget ran out for it (the journal says by how much)")
        self.memo(("warm", backend.name, backend.device), backend.warm_up)
        # Work done ahead for this point counts in its wall time.
        start = time.perf_counter() - (prepared.build_s + prepared.compile_s if prepared else 0)
        skip = self._wont_fit(backend, need_bytes) or self._too_slow(info)
        if skip:
            self._finish(benchmark, info, "skipped", skip, start)
            pytest.skip(f"skipped: {skip}")
        limit = self.settings.timeout_s
        # A compilation done ahead is charged to the point's limit, as if done in its run.
        left = max(limit - prepared.compile_s, 1e-3) if limit and prepared else limit
        why = f"the per-point limit of {limit:g} s"
        share = self._share_left(benchmark.fullname)
        if share is not None and (not left or share < left):  # the budget stops it first
            left, why = max(share, 1e-3), "the end of its share of the sweep's budget"
        self._deadline = time.perf_counter() + left if left else None
        try:
            with time_limit(left, why):
                if limit and prepared and prepared.compile_s >= limit:
                    raise PointTimeout(
                        f"compiled ahead in {prepared.compile_s:.1f} s, past the per-point "
                        f"limit of {limit:g} s"
                    )
                self._inject_faults(benchmark.name)
                info |= self._measure(benchmark, backend, make_task, prepared)
        except (Exception, PointTimeout) as exc:
            status = classify(exc)
            self._finish(benchmark, info, status, describe(exc), start)
            if status == "error":
                raise
        else:
            self._finish(benchmark, info, "ok", info["reason"], start)
            return
        finally:
            _release(backend, failed=info["status"] != "ok")
        pytest.skip(f"{info['status']}: {info['reason']}")

    def _identify(self, backend, extra_info: dict[str, Any], need_bytes: int | None) -> dict:
        """The point's extra_info before it runs: what it is, and on what."""
        info = dict.fromkeys(INFO_KEYS) | extra_info
        return info | {
            "backend": backend.name,
            "device": backend.device,
            "device_name": backend.device_name() or cpu_name(),
            "matmul_precision": backend.matmul_precision(),
            "predicted_bytes": need_bytes,
        }

    def _too_slow(self, info: dict[str, Any]) -> str | None:
        """Why a dense method's point would time out, predicted from the same computation at
        the largest smaller d measured (d passes of a network: time scales as d x FLOPs), or
        None."""
        limit = self.settings.timeout_s
        if not limit or info.get("method") not in DENSE_METHODS or not info.get("flops"):
            return None
        smaller = [c for c in self._calls.get(_cost_key(info), ()) if c[0] < info["d"]]
        if not smaller:
            return None
        d0, flops0, seconds0 = max(smaller)
        per_call = seconds0 * (info["d"] / d0) * (info["flops"] / flops0)
        calls = 1 + self.settings.timing.slow_min_rounds
        if per_call * calls <= TIME_FRACTION * limit:
            return None
        return (
            f"predicted {per_call:.3g} s a call x {calls} calls > {TIME_FRACTION:.0%} of the "
            f"per-point limit of {limit:g} s (d = {d0} took {seconds0:.3g} s a call; scaled "
            "by d x FLOPs)"
        )

    def learn(self, info: dict[str, Any], seconds: float) -> None:
        """Note a measured point's median call time, for the time predictions of later points
        (a point without d and FLOPs predicts nothing)."""
        if info.get("d") and info.get("flops"):
            self._calls[_cost_key(info)].append((info["d"], info["flops"], seconds))

    def _wont_fit(self, backend, need_bytes: int | None) -> str | None:
        if not need_bytes:
            return None
        free, source = available_bytes(backend)
        fraction = FIT_FRACTION["gpu" if backend.device.startswith("cuda") else "cpu"]
        if free is None or need_bytes <= fraction * free:
            return None
        return f"predicted {_gib(need_bytes)} > {fraction:.0%} of {_gib(free)} free ({source})"

    def _inject_faults(self, name: str) -> None:
        faults = self.settings.faults
        time.sleep(faults.delay)
        if faults.oom and fnmatch.fnmatch(name, faults.oom):
            raise MemoryError(f"injected by HOLLOWBENCH_INJECT oom={faults.oom}")
        if faults.error and fnmatch.fnmatch(name, faults.error):
            raise RuntimeError(f"injected by HOLLOWBENCH_INJECT error={faults.error}")
        if faults.timeout and fnmatch.fnmatch(name, faults.timeout):
            time.sleep(2 * self.settings.timeout_s + 1)

    def _disturbance(self, name: str) -> Callable[[str, int], None] | None:
        """HOLLOWBENCH_INJECT noise=GLOB: a deterministic burst of load in a matching point."""
        pattern = self.settings.faults.noise
        if not pattern or not fnmatch.fnmatch(name, pattern):
            return None

        def disturb(phase: str, index: int) -> None:
            if (phase == "warmup" and index == 0) or (phase == "timed" and index < NOISE_CALLS):
                time.sleep(NOISE_S)

        return disturb

    def _measure(
        self, benchmark, backend, make_task: Callable[[], Task], prepared: Prepared | None
    ) -> dict[str, Any]:
        # From before the build: on the CPU, memory freed by the warm-up stays in the heap,
        # so a peak taken over the timed calls alone would read ~0.
        peak = PeakMemory(backend)
        peak.start()
        if prepared is not None:
            if prepared.error is not None:
                raise prepared.error
            task, compiled, how = prepared.task, prepared.compiled, prepared.info
        else:
            task = make_task()
            variant = task.variant or backend.default_variant
            with ahead.cache_status() as how:
                compiled = backend.compile_step(task.fn, task.args, variant)
            how = {"compile_ahead": None} | how
        step, compile_s, static_peak = compiled

        def call():
            out = step(*task.args)
            backend.sync(out)  # the clock is read after this, so async work is counted
            return out

        if not benchmark.enabled:  # --benchmark-disable: run once, measure nothing
            checked = _checked(task, benchmark.pedantic(call), step)
            return {"compile_s": compile_s} | how | checked | task.info
        timing = self.settings.timing
        disturb = self._disturbance(benchmark.name)
        out, seconds = warm_up(call, timing.budget_s, disturb)
        conditions = Conditions(backend.device)
        conditions.start()
        outcome = measure(
            benchmark,
            call,
            rounds_for(seconds, timing),
            timing,
            rule=self.rule,
            disturb=disturb,
            probe=lambda: EnergyMeter(backend.device),
            deadline=self._deadline,
        )
        kept = outcome.measurements[outcome.kept]
        joules = kept.extra.get("joules")
        peak_bytes, peak_kind = static_peak if static_peak is not None else peak.stop()
        measured = how | {
            "compile_s": compile_s,
            "peak_mem_bytes": peak_bytes,
            "peak_mem_kind": peak_kind,
            "energy_j": joules / len(kept.data) if joules is not None else None,
            "energy_kind": kept.extra.get("energy_kind"),
        }
        measured |= outcome.info() | conditions.stop()
        return measured | _checked(task, out, step) | task.info

    def _finish(
        self, benchmark, info: dict[str, Any], status: str, reason: str | None, start: float
    ) -> None:
        """Attach ``info`` to the benchmark and append the point to the journal; ``start`` is
        when the point began (perf_counter), for its wall time."""
        info["status"], info["reason"] = status, reason
        info["wall_s"] = time.perf_counter() - start
        self.counts[status] += 1
        benchmark.extra_info.update(info)
        record = {"name": benchmark.name, "fullname": benchmark.fullname}
        record |= {"params": benchmark.params, "extra_info": info}
        stats = None
        if status == "ok":
            stats = _stats(benchmark)
            if stats is not None:
                self.learn(info, stats["median"])
        else:
            benchmark.has_error = True  # keeps partial stats (a time-out mid-rounds) out of JSON
            self.not_run.append(record)
        self.journal.append({"kind": "point", **record, "stats": stats})
        if self.plan is not None:
            self.plan.done(benchmark.fullname, {**record, "stats": stats})


def _checked(task: Task, out: Any, step: Callable[..., Any]) -> dict[str, Any]:
    """What the task measures off its outputs, then its error figure; a failing check is
    noted but does not void the timing."""
    found = {}
    try:
        found = task.measure(out, step) if task.measure is not None else {}
        if task.check is not None:
            error, kind = task.check(out, step)
            found |= {"error": error, "error_kind": kind}
    except Exception as exc:
        return found | {"reason": f"error check failed: {describe(exc)}"}
    return found


def _stats(benchmark) -> dict[str, Any] | None:
    if benchmark.stats is None:  # --benchmark-disable
        return None
    stats = benchmark.stats.stats
    return {key: getattr(stats, key) for key in (*STATS, "rounds", "ops")} | {
        "iterations": benchmark.stats.iterations
    }


def _cost_key(info: dict[str, Any]) -> tuple:
    return tuple(info.get(k) for k in COST_KEYS)


def _compile_rest(rest: Callable[[], tuple], prepared: Prepared, window: int) -> None:
    """The pool's job: finish one compilation (a backend's ``lower_step`` thunk) in a window of
    ``window`` points, noting whether the persistent cache served it; a failure becomes the
    point's to record."""
    try:
        with ahead.cache_status() as cache:
            prepared.compiled = rest()
        prepared.info = {"compile_ahead": window} | cache
    except Exception as exc:
        prepared.error = exc


def _release(backend, failed: bool) -> None:
    """Free what a point left, so the next sees the real free memory. A failure's traceback
    holds its arrays in cycles: collected (~0.25 s, so healthy CPU points skip it)."""
    on_gpu = backend.device.startswith("cuda")
    if failed or on_gpu:
        gc.collect()
    backend.release_memory()
