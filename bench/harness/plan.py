"""A sweep planned against a time budget (``--bench-budget SECONDS``): the best answer a machine
can give in that time.

Every point gets a priority and a predicted cost. First come the points the paper's claims
C1-C5 and the goals (a)-(d) need (:data:`CLAIMS`), for every backend and device: each side's
cheapest point at a spread of d (the smallest and the middle d of the operators' claims, then
the applications' smallest, then the largest), so every claim is covered at two d before any
gets more; then the claims' other points at those d; then at other d; then the rest. The plan
takes, in that order, every point whose predicted cost still fits. All points stay in the run
order, the planned ones first in each backend and device; at run time a point runs if its
prediction (corrected by how the points so far compared with theirs) ends within its backend
and device's share of the budget, so an unplanned point can use time the planned ones left,
and a point still running at the share's end is stopped there: the sweep stops cleanly at its
budget. Every point left out is journaled with the reason.

A point's cost is ``overhead + timed``: ``overhead`` (building, compiling, the error check) and
the call time come from the same point in this session or in the journals given to
``--bench-costs``, else from the same point at other d and batch sizes (log-log interpolation
over d, the call time scaled by the batch), else from a prior (the point's FLOPs at the rate
the backend and device have shown); ``timed`` is the warm-up and the rounds the current timing
settings give that call. No torch or JAX here.
"""

from __future__ import annotations

import functools
import glob
import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.harness.presets import Timing
from bench.harness.timing import WARMUP_CALLS, rounds_for
from impls import DENSE_METHODS, FUSED_BASE, HOLLOW_METHODS, HollowSpec
from results_format import journal

# The order workloads run in when no budget orders them: the operators first.
WORKLOAD_ORDER = ("divergence", "ddim", "ode", "sde", "cnf")
# Seconds a backend's first point on a device spends importing and warming up.
GROUP_START_S = 5.0
# The share of the budget kept for pytest's own start and end (collection, the JSON).
RESERVE = 0.03
# How far the measured / predicted ratio may correct later predictions.
CORRECTION_BOUNDS = (0.5, 4.0)
# Priors, where neither this session nor a journal has measured a point of the kind: seconds
# of one-off work (building, compiling, the error check) per variant, and per workload item.
COMPILE_PRIOR_S = {"jit": 3.0, "pallas": 5.0, "compile": 15.0, "cudagraph": 1.0, "triton": 5.0}
WORKLOAD_PRIOR_S = {"ode": 10.0, "sde": 5.0, "cnf": 20.0}
# A call's prior time is its work (forward FLOPs of the operator workloads' HollowNet at its d,
# times the batch and the passes its method makes) at a rate learned from the points measured
# on the same backend and device, or at first this one; never under the launch floor.
RATE_PRIOR = {"cpu": 2e10, "cuda": 2e12}  # FLOP/s
FLOOR_S = {"cpu": 1e-4, "cuda": 1e-3}


@dataclass(frozen=True)
class Candidate:
    """A point the sweep may run: ``id`` (the test's node id), its workload's name, the point
    (every workload's has ``backend``, ``device`` and ``d``) and pytest's ``params``."""

    id: str
    workload: str
    point: Any
    params: Mapping[str, Any]
    fits: bool = True  # False: predicted not to fit in memory, so it will be skipped at once

    @property
    def group(self) -> tuple[str, str]:
        return self.point.backend, self.point.device

    @property
    def d(self) -> int:
        return self.point.d

    def has(self, workload: str, **values: tuple) -> bool:
        """Whether this is a ``workload`` point whose fields hold one of ``values`` each."""
        return self.workload == workload and all(
            getattr(self.point, name, None) in allowed for name, allowed in values.items()
        )


Side = Callable[[Candidate], bool]


def _side(workload: str, min_d: int = 1, **values: tuple) -> Side:
    return lambda c: c.d >= min_d and c.has(workload, **values)


@dataclass(frozen=True)
class Claim:
    """A claim or goal of the report (reports/tables.py, reports/goals.py): it is covered at a
    d where every side has a point, per backend and device."""

    key: str
    title: str
    sides: tuple[Side, ...]
    operator: bool = True  # a claim of the operators themselves, not of an application

    def needs(self, c: Candidate) -> bool:
        return any(side(c) for side in self.sides)

    def dims(self, candidates: Iterable[Candidate]) -> list[int]:
        """The d where every side has one of ``candidates`` (one backend and device's)."""
        per_side = [{c.d for c in candidates if side(c)} for side in self.sides]
        return sorted(set.intersection(*per_side)) if per_side else []


_HOLLOW = {"method": HOLLOW_METHODS, "model": ("hollownet",)}
_ONE_PROBE = {"method": ("hutchinson",), "n_probes": (1,)}
_EVAL_HOLLOWNET = {"mode": ("eval",), "model": ("hollownet",)}
# In the order their first points run: the headline goal, then the paper's operator claims,
# then the other goals, then the applications.
CLAIMS = (
    Claim(
        "a",
        "goal (a): hollow train step / Hutchinson-1 on the FLOP-matched MLP",
        (
            _side("divergence", mode=("train",), **_HOLLOW),
            _side("divergence", mode=("train",), model=("mlp_flop_matched",), **_ONE_PROBE),
        ),
    ),
    Claim(
        "C3",
        "C3: exact divergence / Hutchinson-1 on the parameter-matched MLP",
        (
            _side("divergence", **_HOLLOW),
            _side("divergence", model=("mlp_param_matched",), **_ONE_PROBE),
        ),
    ),
    Claim(
        "C1",
        "C1: D_dim^k in k passes, whatever d",
        (_side("ddim", k=(1,), **_HOLLOW), _side("ddim", k=(2, 3, 4), **_HOLLOW)),
    ),
    Claim(
        "C2",
        "C2: a dense diagonal costs the full Jacobian",
        (  # the diagonal alone (eval), on one model as the report pairs them: the HollowNet
            _side("divergence", method=("dense_loop",), **_EVAL_HOLLOWNET),
            _side("divergence", method=("dense_vectorized",), **_EVAL_HOLLOWNET),
            _side("divergence", **_EVAL_HOLLOWNET, **_ONE_PROBE),
        ),
    ),
    Claim("d", "goal (d): best torch variant / best JAX one", (_side("divergence", **_HOLLOW),)),
    Claim(
        "fused",
        "fused kernels: hollow_forward's train step with tau fused, against its base variant",
        (
            _side("divergence", method=("hollow_forward",), variant=tuple(FUSED_BASE)),
            _side("divergence", method=("hollow_forward",), variant=tuple(FUSED_BASE.values())),
        ),
    ),
    Claim(
        "c",
        "goal (c): D_dim^4 / D_dim^1",
        (_side("ddim", k=(1,), **_HOLLOW), _side("ddim", k=(4,), **_HOLLOW)),
    ),
    Claim(
        "b",
        "goal (b): dense / hollow >= d/4 at d >= 128",
        (
            _side("divergence", min_d=128, method=DENSE_METHODS),
            _side("divergence", min_d=128, **_HOLLOW),
        ),
    ),
    Claim(
        "C4",
        "C4: Jacobi-Newton against fixed-point iteration and Newton",
        (
            _side("ode", root_finder=("jacobi_newton",)),
            _side("ode", root_finder=("newton", "fixed_point")),
        ),
        operator=False,
    ),
    Claim(
        "C5",
        "C5: a CNF with an exact trace against a stochastic one",
        (_side("cnf", method=("hollow",)), _side("cnf", method=("hutchinson",))),
        operator=False,
    ),
    Claim(
        "SDE",
        "SDE: the Fokker-Planck residual, hollow against dense",
        (_side("sde", route=("hollow",)), _side("sde", route=("dense",))),
        operator=False,
    ),
)


def spread(dims: list[int]) -> list[int]:
    """The smallest, the middle and the largest of sorted ``dims``, in that order."""
    return list(dict.fromkeys([dims[0], dims[len(dims) // 2], dims[-1]])) if dims else []


# The order of the first points: the operators' claims at their smallest and middle d, the
# applications' at their smallest, the operators' at their largest, then the applications'.
SLOTS = {True: (0, 1, 3), False: (2, 4, 5)}  # by Claim.operator, per spread position


def priorities(
    candidates: list[Candidate], cost: Callable[[Candidate], float]
) -> dict[str, tuple[int, ...]]:
    """id -> a sort key, lowest first. Level 0: for every claim, backend and device, its first
    points (:func:`_first_points`), in the order of SLOTS, so the claims are covered at two d
    before any gets more; level 1: the claims' other points at those d; level 2: at other d;
    level 3: the rest."""
    groups = defaultdict(list)
    for c in candidates:
        if c.fits:  # a point that will not fit covers no claim
            groups[c.group].append(c)
    found: dict[str, tuple[int, ...]] = {}

    def offer(c: Candidate, rank: tuple[int, ...]) -> None:
        found[c.id] = min(found.get(c.id, rank), rank)

    for members in groups.values():
        for index, claim in enumerate(CLAIMS):
            dims = claim.dims(members)
            slots = SLOTS[claim.operator]
            at = {d: slots[position] for position, d in enumerate(spread(dims))}
            for c in members:
                if c.d in dims and claim.needs(c):
                    offer(c, (1, at[c.d], index) if c.d in at else (2, 0, index))
            for position, chosen in enumerate(_first_points(claim, members, cost)):
                for c in chosen:
                    offer(c, (0, slots[position], index))
    return {c.id: found.get(c.id, (3, 0, len(CLAIMS))) for c in candidates}


def _pairing(c: Candidate) -> tuple:
    """What the report pairs a claim's sides on: the mode, and the variant (a fused one as its
    base, the step it replaces a kernel of)."""
    variant = getattr(c.point, "variant", None)
    return getattr(c.point, "mode", None), FUSED_BASE.get(variant, variant)


def _first_points(
    claim: Claim, members: list[Candidate], cost: Callable[[Candidate], float]
) -> list[list[Candidate]]:
    """Per spread d, in spread order, each side's cheapest point: all in one mode and variant
    (as the report pairs them), the one that covers the most d, then the cheapest."""
    best: tuple[tuple, list[list[Candidate]]] | None = None
    for key in {_pairing(c) for c in members}:
        alike = [c for c in members if _pairing(c) == key]
        chosen = [
            [min((c for c in alike if c.d == d and side(c)), key=cost) for side in claim.sides]
            for d in spread(claim.dims(alike))
        ]
        score = (-len(chosen), sum(cost(c) for at_d in chosen for c in at_d))
        if best is None or score < best[0]:
            best = (score, chosen)
    return best[1] if best else []


def coverage(candidates: Iterable[Candidate]) -> dict[str, dict[str, list[int]]]:
    """Claim title -> "backend device" -> the d it is covered at by ``candidates``."""
    groups = defaultdict(list)
    for c in candidates:
        groups[c.group].append(c)
    return {
        claim.title: {f"{b} {dev}": claim.dims(members) for (b, dev), members in groups.items()}
        for claim in CLAIMS
    }


def run_order(candidates: list[Candidate], rank: Mapping[str, tuple] | None = None) -> list:
    """Points of one backend and device together (torch's cached GPU memory and JAX's pool do
    not squeeze each other), GPUs first; inside, by ``rank`` (priorities') or by workload
    (WORKLOAD_ORDER), the grid's order kept within."""
    order = {name: i for i, name in enumerate(WORKLOAD_ORDER)}

    def key(pair: tuple[int, Candidate]) -> tuple:
        index, c = pair
        backend, device = c.group
        inside = rank[c.id] if rank else (order.get(c.workload, len(order)),)
        return backend, device == "cpu", device, *inside, index

    return [c for _, c in sorted(enumerate(candidates), key=key)]


def candidates(settings, devices: Mapping[str, tuple[str, ...]]) -> list[Candidate]:
    """Every runnable point of every workload (bench/workloads/, run by bench/test_<name>.py)
    for ``settings`` on ``devices`` (backend -> devices), as pytest would collect them: a plan
    made without a sweep, e.g. for a machine this one is not."""
    from bench.workloads import workload as named

    found = []
    for name in WORKLOAD_ORDER:
        workload = named(name)
        for p in workload.points(settings, dict(devices)):
            if workload.unavailable(p) is None:
                nodeid = f"bench/test_{name}.py::test_{name}[{p.id}]"
                found.append(Candidate(nodeid, workload.name, p, p.param_dict()))
    return found


# --- the cost model ------------------------------------------------------------------------


@functools.cache
def _flops(d: int) -> int:
    return HollowSpec(dim=d).flops


def work(workload: str, fields: Mapping[str, Any]) -> float:
    """A rough FLOP count of one timed call of the point with these ``fields`` (pytest's
    params): what makes calls of one backend and device comparable across points."""
    d, batch, k = fields.get("d") or 1, fields.get("batch") or 1, fields.get("k") or 1
    method = fields.get("method") or fields.get("route")
    if method == "dense_loop":
        passes = d * k
    elif method in ("dense_vectorized", "dense"):
        passes = d * 2 ** (k - 1)
    else:
        passes = (fields.get("n_probes") or fields.get("n_matvecs") or k) + 1
    train = 3 if fields.get("mode", "train") == "train" else 1
    return float(_flops(d) * batch * passes * train)


def _kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _key(workload: str, params: Mapping[str, Any], leave_out: tuple[str, ...] = ()) -> tuple:
    kept = ((k, v) for k, v in params.items() if v is not None and k not in leave_out)
    return workload, tuple(sorted(kept, key=lambda kv: kv[0]))


FAMILY = ("d", "batch")  # a family: the same point at other d and batch sizes


def _interpolate(points: list[tuple[int, float]], d: int) -> float:
    """log-log interpolation of (d, value) pairs sorted by d at ``d``; beyond them, the slope of
    the nearest two (bounded to [0, 2]); a single pair gives its value."""
    ds = [p[0] for p in points]
    if len(points) == 1:
        return points[0][1]
    i = min(max(bisect_left(ds, d), 1), len(points) - 1)
    (d0, v0), (d1, v1) = points[i - 1], points[i]
    slope = math.log(max(v1, 1e-9) / max(v0, 1e-9)) / math.log(d1 / d0)
    if not d0 <= d <= d1:
        slope = min(max(slope, 0.0), 2.0)
    return max(v0, 1e-9) * (d / d0) ** slope


@dataclass
class Observed:
    """Per point: one-off seconds (build, compile, check: the wall time less the timed calls)
    and the median call time (None: it did not finish a measurement)."""

    overhead_s: float
    call_s: float | None


def observe(record: Mapping[str, Any]) -> Observed | None:
    """What a journal's point record says of the point's cost, or None where it has no
    wall time."""
    info, stats = record.get("extra_info") or {}, record.get("stats") or {}
    wall = info.get("wall_s")
    if wall is None:
        return None
    call, rounds = stats.get("median"), stats.get("rounds")
    if call is None or not rounds:
        return Observed(float(wall), None)
    timed = rounds * call + min((1 + WARMUP_CALLS) * call, wall)
    return Observed(max(float(wall) - timed, 0.0), float(call))


@dataclass
class CostModel:
    """Predicts a point's seconds under ``timing`` from what this session and the given
    journals measured (the session's first), else from priors; capped by the per-point
    ``timeout_s`` (a point stops there)."""

    timing: Timing
    timeout_s: float
    cnf_budget_s: float | None = None
    _seen: list[dict[tuple, Observed]] = field(default_factory=lambda: [{}, {}])
    # family key -> batch -> d -> cost
    _families: list[dict[tuple, dict[int | None, dict[int, Observed]]]] = field(
        default_factory=lambda: [defaultdict(lambda: defaultdict(dict)) for _ in range(2)]
    )
    _rates: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def from_journals(cls, patterns: Iterable[str], **kw) -> CostModel:
        model = cls(**kw)
        for pattern in patterns:
            for path in sorted(glob.glob(pattern, recursive=True)) or [pattern]:
                for record in journal.read(path):
                    if record.get("kind") == "point" and record.get("params"):
                        workload = (record.get("extra_info") or {}).get("workload")
                        model.learn(workload, record["params"], record, source=1)
        return model

    def learn(self, workload: str | None, params: Mapping, record: Mapping, source=0) -> None:
        """Note a point's record (``source`` 0: this session, 1: a journal)."""
        seen = observe(record)
        if workload is None or seen is None:
            return
        self._seen[source][_key(workload, params)] = seen
        if seen.call_s and params.get("backend") and params.get("device"):
            group = (params["backend"], params["device"])
            self._rates[group].append(work(workload, params) / seen.call_s)
        if params.get("d"):
            family = self._families[source][_key(workload, params, FAMILY)]
            family[params.get("batch")][params["d"]] = seen

    def predict(self, c: Candidate) -> tuple[float, str]:
        """(seconds, where from: "session", "journal" or "prior")."""
        for source, name in enumerate(("session", "journal")):
            seen = self._seen[source].get(_key(c.workload, c.params))
            if seen is None:
                family = self._families[source].get(_key(c.workload, c.params, FAMILY))
                seen = _at(family, c.d, c.params.get("batch")) if family else None
            if seen is not None:
                return self._cap(seen.overhead_s + self._timed(seen.call_s)), name
        return self._cap(self._prior(c)), "prior"

    def rate(self, group: tuple[str, str]) -> float:
        """FLOP/s of the group's measured calls (their median), or RATE_PRIOR."""
        rates = sorted(self._rates.get(group, ()))
        return rates[len(rates) // 2] if rates else RATE_PRIOR[_kind(group[1])]

    def _timed(self, call: float | None) -> float:
        if call is None:  # it never finished a measurement: its wall time says it all
            return 0.0
        warm = min((1 + WARMUP_CALLS) * call, max(self.timing.budget_s, call))
        return rounds_for(call, self.timing) * call + warm

    def _prior(self, c: Candidate) -> float:
        variant = getattr(c.point, "variant", "") or ""
        overhead = COMPILE_PRIOR_S.get(variant, 0.5) + WORKLOAD_PRIOR_S.get(c.workload, 0.0)
        if getattr(c.point, "item", None) == "budget":
            overhead += self.cnf_budget_s or 0.0
        call = max(work(c.workload, c.params) / self.rate(c.group), FLOOR_S[_kind(c.group[1])])
        return overhead + self._timed(call)

    def _cap(self, seconds: float) -> float:
        return min(seconds, self.timeout_s + 1.0) if self.timeout_s else seconds


def _at(family: dict[int | None, dict[int, Observed]], d: int, batch: int | None) -> Observed:
    """The family's cost at ``d`` and ``batch``: interpolated in log-log over d at the nearest
    batch measured, its call time scaled by the batch ratio (one-off work does not scale)."""
    near = min(family, key=lambda b: abs(math.log(b / batch)) if b and batch else b != batch)
    pairs = sorted(family[near].items())
    overhead = _interpolate([(k, v.overhead_s) for k, v in pairs], d)
    calls = [(k, v.call_s) for k, v in pairs if v.call_s is not None]
    if not calls:
        return Observed(overhead, None)
    scale = batch / near if batch and near else 1.0
    return Observed(overhead, _interpolate(calls, d) * scale)


# --- the plan ----------------------------------------------------------------------------


@dataclass
class Plan:
    """The budget's plan: every point in run order (``order``: in each backend and device, the
    planned ones first, by priority, then the rest), the ``planned`` ids, each point's predicted
    seconds, and each group's deadline (:meth:`start`). At run time :meth:`admit` decides each
    point from its prediction, corrected by how the points so far compared with theirs
    (:meth:`done`): a planned point may be left out, and an unplanned one run in time left."""

    budget_s: float
    model: CostModel
    order: list[Candidate]
    planned: set[str]
    predicted: dict[str, float]
    deadlines: dict[tuple[str, str], float] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    left_out: list[dict[str, str]] = field(default_factory=list)
    _by_id: dict[str, Candidate] = field(default_factory=dict)
    _ratios: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self):
        self._by_id = {c.id: c for c in self.order}

    def start(self, now: float, left_s: float) -> None:
        """Fix each group's deadline: from ``now``, its planned points' predicted seconds,
        stretched (or shrunk) to fill the ``left_s`` seconds the budget has left; the last
        group's is the budget's end."""
        totals = dict.fromkeys((c.group for c in self.order), GROUP_START_S)
        for point_id in self.planned:
            totals[self._by_id[point_id].group] += self.predicted[point_id]
        scale, at = left_s / sum(totals.values()), now
        for group, total in totals.items():
            at += total * scale
            self.deadlines[group] = at
        self.deadlines[group] = now + left_s

    def admit(self, point_id: str, now: float, ahead_s: float = 0.0) -> str | None:
        """None if the point may run now (``ahead_s``: predicted seconds of points to run
        before it), else why it is left out."""
        c = self._by_id.get(point_id)
        if c is None or not self.deadlines:
            return None
        seconds = self.seconds(c)
        end, deadline = now + ahead_s + seconds, self.deadlines[c.group]
        if end <= deadline:
            return None
        planned = "planned" if c.id in self.planned else "not planned"
        return (
            f"budget: {planned}, predicted {seconds:.1f} s, would end {end - deadline:.1f} s "
            f"past {' '.join(c.group)}'s share of the {self.budget_s:g} s budget"
        )

    def seconds(self, c: Candidate) -> float:
        """The point's cost as now predicted: from this session's points where they measured
        its kind (the model learns as the sweep runs), else the plan's prediction corrected by
        how the points so far compared with theirs."""
        seconds, source = self.model.predict(c)
        return seconds if source == "session" else self.predicted[c.id] * self.correction(c.group)

    def time_left(self, point_id: str, now: float) -> float | None:
        """Seconds until the point's group reaches its deadline (None: not a planned sweep's
        point): a point still running then is stopped, so the sweep ends with its budget."""
        c = self._by_id.get(point_id)
        return self.deadlines[c.group] - now if c is not None and self.deadlines else None

    def correction(self, group: tuple[str, str]) -> float:
        """The mean measured / predicted ratio of the group's points so far, bounded."""
        ratios = self._ratios.get(group)
        if not ratios:
            return 1.0
        low, high = CORRECTION_BOUNDS
        return min(max(sum(ratios) / len(ratios), low), high)

    def done(self, point_id: str, record: Mapping[str, Any]) -> None:
        """A point finished, ran or left out (its journal record): note it, learn its cost."""
        c = self._by_id.get(point_id)
        if c is None:
            return
        info = record.get("extra_info") or {}
        reason = str(info.get("reason") or "")
        if reason.startswith("budget"):
            self.left_out.append({"id": point_id, "reason": reason})
            return
        self.ran.append(point_id)
        if info.get("wall_s") is not None:
            self._ratios[c.group].append(info["wall_s"] / max(self.predicted[c.id], 1e-3))
        self.model.learn(c.workload, c.params, record)

    def describe(self) -> dict[str, Any]:
        """The JSON's ``plan``: the budget, how many points were planned and run (and their
        predicted seconds), the left-out points and why, and each claim's coverage, planned
        and run."""
        planned = [c for c in self.order if c.id in self.planned]
        ran = set(self.ran)
        return {
            "budget_s": self.budget_s,
            "planned": len(planned),
            "run": len(self.ran),
            "predicted_s": sum(self.predicted[c.id] for c in planned),
            "left_out": self.left_out,
            "coverage_planned": coverage(planned),
            "coverage_run": coverage(c for c in self.order if c.id in ran),
        }


def make_plan(
    candidates: list[Candidate], model: CostModel, *, budget_s: float, left_s: float
) -> Plan:
    """Plan, in priority order, each point whose predicted cost still fits in ``left_s``, the
    seconds the sweep's ``budget_s`` has left when it plans (less a start-up per backend and
    device); every point stays in the run order. The plan names ``budget_s``, the budget the
    sweep was given."""
    ranks = priorities(candidates, lambda c: model.predict(c)[0])
    predicted = {c.id: model.predict(c)[0] for c in candidates}
    spent, groups, planned = 0.0, set(), set()
    for c in sorted(candidates, key=lambda c: ranks[c.id]):
        start = 0.0 if c.group in groups else GROUP_START_S
        if c.fits and spent + start + predicted[c.id] <= left_s:
            spent += start + predicted[c.id]
            groups.add(c.group)
            planned.add(c.id)
    first = {c.id: (c.id not in planned, *ranks[c.id]) for c in candidates}
    return Plan(budget_s, model, run_order(candidates, first), planned, predicted)
