"""The sweep: one pytest session's state, and :meth:`Sweep.run`, through which every benchmark
point goes.

A :class:`Sweep` holds the session's backends and memo (what workloads share), and its parts:
the planner (bench/harness/predict.py: memory and time predictions, the budget's plan), the
compile-ahead window (bench/harness/ahead.py) and the journal. ``run`` is the runner: it skips
a point predicted not to fit or time out; under the per-point limit (bench/harness/limit.py)
builds and compiles its task (or takes what a window prepared, its compile time charged to its
limit); times it (bench/harness/timing.py); reads peak memory, energy, conditions and the
task's error; records OOMs and time-outs as statuses (other failures fail the test); journals
every outcome at once, and hands an ok point's kept measurement to pytest-benchmark.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from bench.harness import ahead
from bench.harness.case import Case, Task
from bench.harness.journal import Journal
from bench.harness.limit import PointTimeout, classify, describe, time_limit
from bench.harness.options import OptionError, Settings
from bench.harness.predict import Planner
from bench.harness.telemetry import Conditions, EnergyMeter, PeakMemory, cpu_name
from bench.harness.timing import RULE, hand_over, measure, rounds_for, summary, warm_up
from bench.schema import INFO_KEYS

__all__ = ["Case", "PointTimeout", "Sweep", "Task", "classify", "time_limit"]


class Sweep:
    """One pytest session's sweep: settings, backends, memo, the journal, the points not run,
    and its planner and compile-ahead window."""

    def __init__(self, settings: Settings, journal: Journal):
        self.settings = settings
        self.journal = journal
        self.not_run: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.rule = RULE  # the noise test (bench/harness/timing.py)
        self.planner = Planner(settings, journal)
        self.window = ahead.Window(settings, self.planner, self.identify)
        self._backends: dict[tuple[str, str], Any] = {}
        self._memo: dict[Any, Any] = {}

    @property
    def plan(self):
        """The budget's plan (bench/harness/plan.py), or None without ``--bench-budget``."""
        return self.planner.plan

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

    def close(self) -> None:
        self.window.close()

    def identify(self, case: Case) -> dict[str, Any]:
        """The point's extra_info before it runs: what it is, and on what."""
        backend = case.backend
        info = dict.fromkeys(INFO_KEYS) | case.info
        return info | {
            "backend": backend.name,
            "device": backend.device,
            "device_name": backend.device_name() or cpu_name(),
            "matmul_precision": backend.matmul_precision(),
            "predicted_bytes": case.need_bytes,
        }

    def run(self, benchmark, case: Case) -> None:
        """Measure and record ``case`` as the point of ``benchmark`` (pytest-benchmark's
        fixture). A point not run is recorded, then skipped
        (oom, timeout, predicted not to fit, left out by the budget) or re-raised (errors)."""
        name, fullname = benchmark.name, benchmark.fullname
        benchmark.group = case.group
        backend = case.backend
        prepared = self.window.take(fullname)
        # A window identified and checked its points when it prepared them.
        info = prepared.info if prepared else self.identify(case)
        finish = _Finish(self, benchmark, case.params)
        left_out = None if prepared else self.planner.left_out(fullname)
        if left_out:  # before the backend's warm-up: a left-out point costs nothing
            finish(info, "skipped", left_out, time.perf_counter())
            pytest.skip("skipped: the budget ran out for it (the journal says by how much)")
        self.memo(("warm", backend.name, backend.device), backend.warm_up)
        # Work done ahead for this point counts in its wall time.
        start = time.perf_counter() - (prepared.build_s + prepared.compile_s if prepared else 0)
        skip = None if prepared else self.planner.skip_reason(backend, info, case.need_bytes)
        if skip:
            finish(info, "skipped", skip, start)
            pytest.skip(f"skipped: {skip}")
        limit = self.settings.timeout_s
        # A compilation done ahead is charged to the point's limit, as if done in its run.
        left = max(limit - prepared.compile_s, 1e-3) if limit and prepared else limit
        why = f"the per-point limit of {limit:g} s"
        share = self.planner.share_left(fullname)
        if share is not None and (not left or share < left):  # the budget stops it first
            left, why = max(share, 1e-3), "the end of its share of the sweep's budget"
        deadline = time.perf_counter() + left if left else None
        kept: list[float] | None = None
        try:
            with time_limit(left, why):
                if limit and prepared and prepared.compile_s >= limit:
                    raise PointTimeout(
                        f"compiled ahead in {prepared.compile_s:.1f} s, past the per-point "
                        f"limit of {limit:g} s"
                    )
                self.settings.faults.inject(name, limit)
                measured, kept = self._measure(benchmark, case, prepared, deadline)
                info |= measured
        except (Exception, PointTimeout) as exc:
            status = classify(exc)
            finish(info, status, describe(exc), start)
            if status == "error":
                raise
        else:
            finish(info, "ok", info["reason"], start, kept)
            if kept is not None:  # outside the limit: nothing stops it half-way
                hand_over(benchmark, kept)
            return
        finally:
            _release(backend, failed=info["status"] != "ok")
        pytest.skip(f"{info['status']}: {info['reason']}")

    def _measure(
        self, benchmark, case: Case, prepared: ahead.Prepared | None, deadline: float | None
    ) -> tuple[dict[str, Any], list[float] | None]:
        """(what the point measured, the kept measurement's seconds per round; None under
        --benchmark-disable, where its task runs once and nothing is timed)."""
        backend = case.backend
        # From before the build: on the CPU, memory freed by the warm-up stays in the heap,
        # so a peak taken over the timed calls alone would read ~0.
        peak = PeakMemory(backend)
        peak.start()
        if prepared is not None:
            if prepared.error is not None:
                raise prepared.error
            task, compiled, how = prepared.task, prepared.compiled, prepared.how
        else:
            task = case.make_task()
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
            return {"compile_s": compile_s} | how | checked | task.info, None
        timing = self.settings.timing
        disturb = self.settings.faults.disturbance(benchmark.name)
        out, seconds = warm_up(call, timing.budget_s, disturb)
        conditions = Conditions(backend.device)
        conditions.start()
        outcome = measure(
            call,
            rounds_for(seconds, timing),
            timing,
            rule=self.rule,
            disturb=disturb,
            probe=lambda: EnergyMeter(backend.device),
            deadline=deadline,
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
        return measured | _checked(task, out, step) | task.info, kept.data


class _Finish:
    """Records one point's outcome: its extra_info on the benchmark, the session's counts and
    not-run list, the journal, and what the planner learns from it."""

    def __init__(self, sweep: Sweep, benchmark, params: dict[str, Any]):
        self.sweep, self.benchmark, self.params = sweep, benchmark, params

    def __call__(
        self,
        info: dict[str, Any],
        status: str,
        reason: str | None,
        start: float,
        kept: list[float] | None = None,
    ) -> None:
        """``start``: when the point began (perf_counter), for its wall time; ``kept``: an ok
        point's seconds per round (None: not timed)."""
        sweep, benchmark = self.sweep, self.benchmark
        info["status"], info["reason"] = status, reason
        info["wall_s"] = time.perf_counter() - start
        sweep.counts[status] += 1
        benchmark.extra_info.update(info)
        record = {"name": benchmark.name, "fullname": benchmark.fullname}
        record |= {"params": self.params, "extra_info": info}
        stats = summary(kept) if kept else None
        if stats is not None:
            sweep.planner.learn(info, stats["median"])
        if status != "ok":
            sweep.not_run.append(record)
        sweep.journal.append({"kind": "point", **record, "stats": stats})
        sweep.planner.done(benchmark.fullname, {**record, "stats": stats})


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


def _release(backend, failed: bool) -> None:
    """Free what a point left, so the next sees the real free memory. A failure's traceback
    holds its arrays in cycles: collected (~0.25 s, so healthy CPU points skip it)."""
    on_gpu = backend.device.startswith("cuda")
    if failed or on_gpu:
        gc.collect()
    backend.release_memory()
