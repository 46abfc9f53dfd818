"""The sweep: session state, and :meth:`Sweep.run`, through which every benchmark point goes.

``run`` owns the measurement rules, so later workloads (CNF, ODE, SDE) reuse them unchanged:

1. skip the point, with the reason, when its predicted memory does not fit;
2. under a per-point time limit (SIGALRM), build the task and, for JAX, compile it ahead of
   time (``jax.jit(fn).lower(*args).compile()``), timing compilation apart;
3. warm up, then time synchronised calls with ``benchmark.pedantic``, rounds calibrated from
   the median of several warm-up calls so each point costs about the preset's budget; judge
   the measurement's noise and re-measure a noisy point once (bench/harness/timing.py);
4. read peak memory over the point, NVML energy over the kept timed calls, the conditions
   (load, CPU share; GPU clocks, throttling and other processes), and the task's error figure;
5. turn OOMs and time-outs into recorded statuses (the test is skipped, the sweep goes on),
   let other failures fail the test, and append every outcome to the journal at once.
"""

from __future__ import annotations

import fnmatch
import gc
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.harness.journal import Journal
from bench.harness.options import OptionError, Settings
from bench.harness.telemetry import (
    Conditions,
    EnergyMeter,
    PeakMemory,
    available_bytes,
    device_name,
)
from bench.harness.timing import RULE, measure, rounds_for, warm_up
from bench.schema import INFO_KEYS, STATS

# Predictions are rough. On the CPU a point that does not fit summons the OOM killer, which
# ends the sweep: it must be predicted to fit in 80% of the free RAM. On a GPU an OOM is caught
# and recorded, so only points predicted to need over 1.5x the free memory are not tried.
FIT_FRACTION = {"cpu": 0.8, "gpu": 1.5}
OOM_MARKERS = ("resource_exhausted", "out of memory", "can't allocate memory", "failed to allocate")
# HOLLOWBENCH_INJECT noise=GLOB: seconds slept in the first warm-up call after the one-off call
# and in the first NOISE_CALLS timed calls of the first measurement of a matching point.
NOISE_S = 0.1
NOISE_CALLS = 2


class PointTimeout(BaseException):
    """A point ran past the per-point time limit.

    A BaseException, like KeyboardInterrupt, so that libraries' ``except Exception`` blocks
    (torch guards some lazy imports that way) cannot swallow it and run on half-initialised.
    """


@dataclass
class Task:
    """What one point times: ``fn(*args)`` returns the outputs to wait for. For JAX, ``fn`` must
    be pure and jittable (the harness compiles it); for torch it runs eagerly as given.
    ``check(outputs, step)`` returns (error, error_kind) from a warm-up call's outputs; ``step``
    is the callable being timed (JAX: the compiled executable), for checks that need more calls
    of it on the same argument shapes. ``measure(outputs, step)``, run before the check,
    returns extra_info entries read off the outputs or measured beside the timed call (solver
    counters, a held-out evaluation's time), kept even when the check then fails. ``info``
    holds entries known when the task is built. Both are merged into the point's extra_info
    before it is journaled. ``variant``: how the backend runs ``fn`` (``impls.VARIANTS``;
    None: its default)."""

    fn: Callable[..., Any]
    args: tuple
    check: Callable[[Any, Callable[..., Any]], tuple[float | None, str | None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None
    measure: Callable[[Any, Callable[..., Any]], dict[str, Any]] | None = None


IMPORT_FRAMES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
IMPORT_RETRY_S = 0.05


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in IMPORT_FRAMES:
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PointTimeout in the main thread after ``seconds`` (0: no limit).

    SIGALRM interrupts Python code only: a single long native call (one XLA execution or
    compilation) is stopped when it returns to Python, not during it. An import in progress
    is let finish first (the alarm re-arms), so no module is left half-initialised.
    """
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def on_alarm(signum, frame):
        if _importing(frame):
            signal.setitimer(signal.ITIMER_REAL, IMPORT_RETRY_S)
            return
        raise PointTimeout(f"ran past the per-point limit of {seconds:g} s")

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
        self._deadline: float | None = None  # the running point's time limit (perf_counter)

    # --- backends and devices -------------------------------------------------------------

    def discover(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """(devices each installed backend will use, reason each requested one is missing).

        Raises OptionError when an explicitly requested device is visible to no backend.
        """
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

    # --- one point ------------------------------------------------------------------------

    def run(
        self,
        benchmark,
        backend,
        make_task: Callable[[], Task],
        extra_info: dict[str, Any],
        *,
        need_bytes: int | None = None,
    ) -> None:
        """Measure the task ``make_task()`` builds as one point, and record it.

        ``extra_info`` gives the point's identity (SCHEMA.md keys); ``need_bytes`` the memory
        it is predicted to need. Not-run points are recorded, then skipped (oom, timeout,
        predicted not to fit) or re-raised (any other error).
        """
        self.memo(("warm", backend.name, backend.device), backend.warm_up)
        info = dict.fromkeys(INFO_KEYS) | extra_info
        info |= {
            "backend": backend.name,
            "device": backend.device,
            "device_name": device_name(backend),
            "matmul_precision": backend.matmul_precision(),
            "predicted_bytes": need_bytes,
        }
        start = time.perf_counter()
        skip = self._wont_fit(backend, need_bytes)
        if skip:
            self._finish(benchmark, info, "skipped", skip, start)
            pytest.skip(f"skipped: {skip}")
        limit = self.settings.timeout_s
        self._deadline = time.perf_counter() + limit if limit else None
        try:
            with time_limit(limit):
                self._inject_faults(benchmark.name)
                info |= self._measure(benchmark, backend, make_task)
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

    def _measure(self, benchmark, backend, make_task: Callable[[], Task]) -> dict[str, Any]:
        # From before the build: on the CPU, memory freed by the warm-up stays in the heap,
        # so a peak taken over the timed calls alone would read ~0.
        peak = PeakMemory(backend)
        peak.start()
        task = make_task()
        variant = task.variant or backend.default_variant
        step, compile_s, static_peak = backend.compile_step(task.fn, task.args, variant)

        def call():
            out = step(*task.args)
            backend.sync(out)  # the clock is read after this, so async work is counted
            return out

        if not benchmark.enabled:  # --benchmark-disable: run once, measure nothing
            checked = _checked(task, benchmark.pedantic(call), step)
            return {"compile_s": compile_s} | checked | task.info
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
            probe=lambda: _energy(backend.device),
            deadline=self._deadline,
        )
        kept = outcome.chosen
        joules = kept.extra.get("joules")
        peak_bytes, peak_kind = static_peak if static_peak is not None else peak.stop()
        measured = {
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
        stats = None
        if status == "ok":
            stats = _stats(benchmark)
        else:
            benchmark.has_error = True  # keeps partial stats (a time-out mid-rounds) out of JSON
            self.not_run.append(
                {
                    "name": benchmark.name,
                    "fullname": benchmark.fullname,
                    "params": benchmark.params,
                    "extra_info": info,
                }
            )
        self.journal.append(
            {
                "kind": "point",
                "name": benchmark.name,
                "fullname": benchmark.fullname,
                "params": benchmark.params,
                "extra_info": info,
                "stats": stats,
            }
        )


@contextmanager
def _energy(device: str) -> Iterator[dict[str, Any]]:
    """NVML energy over one measurement's timed calls: ``joules`` and ``energy_kind``."""
    meter, extra = EnergyMeter(device), {}
    meter.start()
    try:
        yield extra
    finally:  # a time-out must not leave the power sampler running
        extra["joules"], extra["energy_kind"] = meter.stop()


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


def _release(backend, failed: bool) -> None:
    """Free what a point left behind, so the next one sees the device's real free memory.

    A failure's traceback holds the point's arrays in reference cycles, hence the collection;
    it costs ~0.25 s with torch and JAX loaded, so healthy CPU points skip it.
    """
    on_gpu = backend.device.startswith("cuda")
    if failed or on_gpu:
        gc.collect()
    backend.release_memory()
