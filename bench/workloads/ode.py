"""The stiff-ODE workload: whole solves of one problem (``impls.{torch,jax}_backend.stiff``) by
implicit steppers whose stages are solved by fixed-point iteration, Newton (dense Jacobian + LU)
or Jacobi-Newton (the Jacobian diagonal: analytic, or the hollow operator for the HollowNet
system), or by diffrax's Kvaerno5; the solver's counters (ODE_KEYS) and the final state's error
against scipy at rtol 1e-10 are recorded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.harness.case import Case, Task
from bench.workloads.base import PointBase, Workload, attrs, backend_module, spec_info
from impls._stiff import STATS, summarize
from impls.stiff_problems import (
    RTOL_SWEEP,
    HollowProblem,
    Problem,
    error_metrics,
    hollow_problem,
    make_problem,
    reference,
    reference_solution,
)

FINDERS = (("fixed_point", "never"), ("newton", "never"), ("jacobi_newton", "never"))
DIFFRAX_METHODS = ("kvaerno5",)
HOLLOW_STIFFNESS = 1e3  # the default ratio of the fastest to the slowest decay rate
BATCH = 1
# Solver counters copied into extra_info (bench/SCHEMA.md, "ODE keys").
ODE_KEYS = (*STATS, "iters_per_step", "success", "t_final", "error_rel")


@dataclass(frozen=True)
class OdePoint(PointBase):
    """One solve: ``problem`` at state dimension ``d`` (the HollowNet system's ``stiffness``,
    else None) by ``method`` (a stepper, or a diffrax solver) with ``root_finder`` (Jacobian
    ``reuse``) at tolerance ``rtol``."""

    backend: str
    device: str
    problem: str
    d: int
    stiffness: float | None
    method: str
    root_finder: str
    reuse: str
    rtol: float

    @property
    def id(self) -> str:
        reuse = "" if self.reuse == "never" else f"-reuse_{self.reuse}"
        stiff = f"-s{self.stiffness:.0e}" if self.stiffness is not None else ""
        return (
            f"{self.backend}-{self.device}-{self.problem}-d{self.d}{stiff}-{self.method}-"
            f"{self.root_finder}{reuse}-rtol{self.rtol:.0e}"
        )


# --- the grid per preset ---------------------------------------------------------------------

CLASSIC = (("robertson", 3), ("van_der_pol", 2), ("hires", 8))
NEWTONS = (("newton", "never"), ("jacobi_newton", "never"))
REUSE = (*FINDERS, ("newton", "always"))


@dataclass(frozen=True)
class OdePreset:
    """(problem, d, stiffness, method, root_finder, reuse, rtol) rows, the solver's step
    limit, and problem arguments other than the defaults."""

    rows: tuple[tuple, ...]
    max_steps: int
    problem_args: dict[str, dict[str, Any]] = field(default_factory=dict)


def _rows(problems, methods, finders, rtols) -> list[tuple]:
    """Every (problem, d[, stiffness]) case (the HollowNet system's default: HOLLOW_STIFFNESS)
    with every method, finder and rtol."""
    cases = [
        (p, d, (s or [HOLLOW_STIFFNESS])[0] if p == "hollow" else None) for p, d, *s in problems
    ]
    return [
        (*case, method, finder, reuse, rtol)
        for case in cases
        for method in methods
        for finder, reuse in finders
        for rtol in rtols
    ]


def _paper() -> tuple[tuple, ...]:
    """The Jacobi-Newton table (BDF2 and backward Euler), work-precision sweeps, the d-sweep,
    the stiffness sweep and diffrax; minus a dense Jacobian per Newton iteration at d > 128,
    which takes minutes on a CPU."""
    table = [*CLASSIC, ("brusselator", 128), ("hollow", 32)]
    rows = _rows(table, ["bdf2"], REUSE, [1e-5]) + _rows(table, ["backward_euler"], REUSE, [1e-3])
    wp = [("robertson", 3), ("hires", 8), ("brusselator", 128), ("hollow", 32)]
    rows += _rows(wp, ["bdf2"], NEWTONS, RTOL_SWEEP[:-1])
    rows += _rows([("hollow", d) for d in (8, 32, 128, 512)], ["bdf2"], REUSE, [1e-5])
    rows += _rows([("brusselator", d) for d in (32, 128, 512)], ["bdf2"], NEWTONS, [1e-5])
    stiffnesses = [("hollow", 32, s) for s in (1e1, 1e2, 1e3, 1e4, 1e5)]
    rows += _rows(stiffnesses, ["bdf2"], FINDERS, [1e-5])
    rows += _rows([*table, ("hollow", 128)], DIFFRAX_METHODS, NEWTONS, [1e-5])
    rows = dict.fromkeys(rows)
    return tuple(row for row in rows if not (row[4:6] == ("newton", "never") and row[1] > 128))


def _full() -> tuple[tuple, ...]:
    """Every problem and size, stepper, root finder and reuse, over the whole rtol sweep."""
    every = [
        *CLASSIC,
        *[("brusselator", 2 * n * n) for n in (4, 8, 16, 32)],
        *[("hollow", d) for d in (8, 32, 128, 512, 2048)],
        *[("hollow", 32, s) for s in (1e1, 1e2, 1e4, 1e5)],
    ]
    reuse = [(finder, r) for finder in ("newton", "jacobi_newton") for r in ("step", "always")]
    rows = _rows(every, ["backward_euler", "bdf2"], (*FINDERS, *reuse), RTOL_SWEEP)
    rows += _rows(every, DIFFRAX_METHODS, NEWTONS, RTOL_SWEEP)
    return tuple(dict.fromkeys(rows))


PRESETS = {
    # A ~30 s taste on a CPU: Robertson shortened (t1 = 1e5 takes ~10 s a solve in eager
    # torch) and a small HollowNet system.
    "quick": OdePreset(
        tuple(_rows([("robertson", 3), ("hollow", 16)], ["bdf2"], FINDERS, [1e-4])),
        max_steps=1000,
        problem_args={"robertson": {"t1": 40.0}},
    ),
    "paper": OdePreset(_paper(), max_steps=20_000),
    "full": OdePreset(_full(), max_steps=100_000),
}


def build_problem(point: OdePoint, preset: OdePreset) -> Problem | HollowProblem:
    if point.problem == "hollow":
        return hollow_problem(point.d, stiffness=point.stiffness)
    args = dict(preset.problem_args.get(point.problem, {}))
    if point.problem == "brusselator":
        args["n"] = round((point.d / 2) ** 0.5)
    return make_problem(point.problem, **args)


def make_system(backend, problem: Problem | HollowProblem):
    stiff = backend_module(backend, "stiff")
    if isinstance(problem, HollowProblem):
        return stiff.HollowSystem.from_problem(problem, backend.device)
    return stiff.ProblemSystem(problem)


def _hollow_reference(sweep, backend, problem: HollowProblem) -> np.ndarray:
    """The HollowNet system's final state (d,) by scipy's BDF at rtol 1e-10 (4-7x faster than
    Radau here), f and its Jacobian from jitted JAX where installed, else the point's backend."""
    with contextlib.suppress(ImportError):
        backend = sweep.backend("jax", "cpu")
    system = make_system(backend, problem)

    def row_call(method):
        call = backend.jit(lambda y: method(0.0, y[None])[0])
        return lambda t, y: backend.to_numpy(call(backend.asarray(y))).astype(np.float64)

    return reference_solution(
        row_call(system.rhs),
        problem.y0,
        problem.t_span,
        atol=1e-12 * problem.atol_scale,
        method="BDF",
        jac=row_call(system.jacobian),
    )[-1]


def make_task(sweep, backend, point: OdePoint, preset: OdePreset) -> Task:
    """The solve to time; it measures the solver's counters and the relative error, and its
    check gives the absolute error against the reference (once per problem)."""
    problem = build_problem(point, preset)
    stiff, system = backend_module(backend, "stiff"), make_system(backend, problem)
    y0 = backend.asarray(np.repeat(problem.y0[None], BATCH, axis=0))
    options = {
        "root_finder": point.root_finder,
        "rtol": point.rtol,
        "atol": problem.atol(point.rtol),
        "max_steps": preset.max_steps,
    }
    if point.method in DIFFRAX_METHODS:
        options["solver"] = point.method
        solve = stiff.diffrax_solve
    else:
        options |= {"stepper": point.method, "reuse": point.reuse}
        solve = stiff.solve
    fn, args = (lambda system, y0: solve(system, y0, problem.t_span, **options)), (system, y0)

    def final_reference() -> np.ndarray:  # scipy's Radau at rtol 1e-10, or BDF
        hollow = isinstance(problem, HollowProblem)
        return _hollow_reference(sweep, backend, problem) if hollow else reference(problem)[-1]

    def errors(out) -> dict[str, float]:
        ref = sweep.memo(("ode-reference", problem.key), final_reference)
        y = backend.to_numpy(out.ys[-1]).astype(np.float64)
        return error_metrics(y, np.broadcast_to(ref, y.shape), problem.atol_scale)

    def measure(out, step) -> dict[str, Any]:
        found = summarize(out.stats)
        return found | ({"error_rel": errors(out)["error_rel"]} if found["success"] else {})

    def check(out, step) -> tuple[float, str]:
        if not bool(out.stats["success"]):
            t_final = float(out.stats["t_final"])
            raise RuntimeError(f"stopped at t={t_final:g} of {problem.t_span[1]:g}")
        return errors(out)["error"], "max_abs_final"

    return Task(fn, args, check, measure=measure)


class OdeWorkload(Workload):
    name, point_type, presets = "ode", OdePoint, PRESETS

    def rows(self, settings, backend: str) -> list[tuple]:
        rows = self.preset(settings).rows
        return [row for row in rows if backend == "jax" or row[3] not in DIFFRAX_METHODS]

    def case(self, sweep, point: OdePoint) -> Case:
        preset = self.preset(sweep.settings)
        backend = sweep.backend(point.backend, point.device)
        problem = build_problem(point, preset)
        hollow = isinstance(problem, HollowProblem)
        model = dict.fromkeys(("n_params", "flops", "model_spec"))
        info = {
            "workload": "ode",
            **attrs(point, "method", "d"),
            "model": "hollownet" if hollow else None,
            "batch": BATCH,
            "k": 1,
            "mode": "eval",
            **(spec_info(problem.spec) if hollow else model),
            "dtype": "float64",
            **attrs(point, "problem", "root_finder", "reuse"),
            "stepper": point.method,
            "adaptive": True,
            "rtol": point.rtol,
            "atol": problem.atol(point.rtol),
            "t1": problem.t_span[1],
            "stiffness": problem.stiffness if hollow else None,
            "max_steps": preset.max_steps,
            "reference": f"scipy {'BDF' if hollow else 'Radau'} rtol=1e-10",
        } | dict.fromkeys(ODE_KEYS)
        return Case(
            backend,
            lambda: make_task(sweep, backend, point, preset),
            info,
            group=f"ode {point.problem} d={point.d} {point.method} rtol={point.rtol:.0e}",
            params=point.param_dict(),
        )


WORKLOAD = OdeWorkload()
