"""The sweep's planner: what each point is predicted to cost, and what the sweep leaves out for
it. Memory: a point predicted not to fit is skipped. Time: a dense method's point is predicted
from the same computation at a smaller d measured this session, and skipped when it would time
out. Under ``--bench-budget``: the run order and the plan (bench/harness/plan.py), and at run
time whether the budget still admits each point.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from bench.harness import plan
from bench.harness.journal import Journal
from bench.harness.options import Settings
from bench.harness.telemetry import available_bytes
from impls import DENSE_METHODS

# Predictions are rough. On the CPU a point that does not fit summons the OOM killer, which
# ends the sweep: it must be predicted to fit in 80% of the free RAM. On a GPU an OOM is caught
# and recorded, so only points predicted to need over 1.5x the free memory are not tried.
FIT_FRACTION = {"cpu": 0.8, "gpu": 1.5}
# A dense method's point is skipped when its predicted time, its first call and the fewest
# rounds a slow call gets, exceeds this fraction of the per-point limit: it would time out.
TIME_FRACTION = 0.5
# What a dense point's time is predicted from: the same computation at a smaller d.
COST_KEYS = ("workload", "backend", "device", "method", "variant", "model", "mode", "batch", "k",
             "n_probes", "n_matvecs")  # fmt: skip


def cost_key(info: dict[str, Any]) -> tuple:
    return tuple(info.get(k) for k in COST_KEYS)


def dense_cost_key(info: dict[str, Any]) -> tuple | None:
    """The cost key of a dense method's point (whose time is predicted), else None."""
    return cost_key(info) if info.get("method") in DENSE_METHODS else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class Planner:
    """Predictions and the budget's plan for one session (``journal``: where a plan is
    recorded)."""

    def __init__(self, settings: Settings, journal: Journal):
        self.settings = settings
        self.journal = journal
        self.plan: plan.Plan | None = None  # under --bench-budget
        self._started = time.perf_counter()  # a budget counts from here
        self._calls: defaultdict[tuple, list[tuple[int, float, float]]] = defaultdict(list)

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
        self.plan = plan.make_plan(candidates, model, budget_s=s.sweep_budget_s, left_s=left)
        self.plan.start(time.perf_counter(), left)
        planned = [c.id for c in self.plan.order if c.id in self.plan.planned]
        self.journal.append({"kind": "plan", **self.plan.describe(), "planned_ids": planned})
        return self.plan.order

    def left_out(self, fullname: str, ahead_s: float = 0.0) -> str | None:
        """Why the budget leaves this point out now (``ahead_s``: predicted seconds of points
        to run before it), or None (no budget, or it fits)."""
        if self.plan is None:
            return None
        return self.plan.admit(fullname, time.perf_counter(), ahead_s)

    def share_left(self, fullname: str) -> float | None:
        """Seconds left of the point's share of the budget (None: no budget): a point or a
        compile-ahead window still running then is stopped, so the sweep ends with it."""
        return self.plan.time_left(fullname, time.perf_counter()) if self.plan else None

    def predicted_s(self, fullname: str) -> float:
        """The plan's predicted seconds of a point (0 without a budget)."""
        return self.plan.predicted.get(fullname, 0.0) if self.plan is not None else 0.0

    def skip_reason(self, backend, info: dict[str, Any], need_bytes: int | None) -> str | None:
        """Why the point would not fit or would time out, or None."""
        return self.wont_fit(backend, need_bytes) or self.too_slow(info)

    def wont_fit(self, backend, need_bytes: int | None) -> str | None:
        if not need_bytes:
            return None
        free, source = available_bytes(backend)
        fraction = FIT_FRACTION["gpu" if backend.device.startswith("cuda") else "cpu"]
        if free is None or need_bytes <= fraction * free:
            return None
        return f"predicted {_gib(need_bytes)} > {fraction:.0%} of {_gib(free)} free ({source})"

    def too_slow(self, info: dict[str, Any]) -> str | None:
        """Why a dense method's point would time out, predicted from the same computation at
        the largest smaller d measured (d passes of a network: time scales as d x FLOPs), or
        None."""
        limit = self.settings.timeout_s
        if not limit or info.get("method") not in DENSE_METHODS or not info.get("flops"):
            return None
        smaller = [c for c in self._calls.get(cost_key(info), ()) if c[0] < info["d"]]
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
            self._calls[cost_key(info)].append((info["d"], info["flops"], seconds))

    def done(self, fullname: str, record: dict[str, Any]) -> None:
        """A point finished (its journal record, stats included): the plan learns from it."""
        if self.plan is not None:
            self.plan.done(fullname, record)
