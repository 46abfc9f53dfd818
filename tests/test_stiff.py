"""Implicit stiff solvers (impls/*/stiff.py): orders, root finders, scipy references, parity.

References are computed here with scipy (Radau, rtol 1e-10), never stored. The global error of
an order-p method under per-step error control scales like tol^(p/(p+1)), not like tol, so
"within the requested tolerance" is checked as a scaled error |y - ref| / (atol + rtol |ref|)
below a stated bound, plus the error falling as the tolerance tightens.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import backend_or_skip

from impls.stiff_problems import (
    brusselator,
    hires,
    hollow_problem,
    make_problem,
    reference,
    reference_solution,
    robertson,
    van_der_pol,
)


def _stiff(backend):
    return importlib.import_module(f"impls.{backend.name}_backend.stiff")


def _np(backend, a) -> np.ndarray:
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def _diag_and_jacobian(backend, system, y) -> tuple[np.ndarray, np.ndarray]:
    """(D_dim f, the dense Jacobian) at y; JAX compiles them (eager is slower)."""

    def both(system, y):
        return system.diag(0.0, y), system.jacobian(0.0, y)

    if backend.name == "jax":
        import jax

        both = jax.jit(both)
    diag, jac = both(system, y)
    return _np(backend, diag), _np(backend, jac)


def _custom_system(backend, rhs, dim, diag):
    """A System from (t, y, xp) callables, in the backend's array namespace."""
    xp = importlib.import_module("torch" if backend.name == "torch" else "jax.numpy")
    return _stiff(backend).System(lambda t, y: rhs(t, y, xp), dim, lambda t, y: diag(t, y, xp))


# --- order of convergence --------------------------------------------------------------------

PR_LAMBDAS = np.array([1.0, 30.0, 1000.0])  # Prothero-Robinson, mildly to very stiff
PR_PHASE = np.array([0.0, 0.5, 1.0])


def _pr_rhs(t, y, xp):
    """y' = -lambda (y - sin(t + phase)) + cos(t + phase); exact y = sin(t + phase)."""
    phase = xp.asarray(PR_PHASE, dtype=y.dtype)
    lam = xp.asarray(PR_LAMBDAS, dtype=y.dtype)
    return -lam * (y - xp.sin(t + phase)) + xp.cos(t + phase)


def _pr_diag(t, y, xp):
    return 0 * y - xp.asarray(PR_LAMBDAS, dtype=y.dtype)


@pytest.mark.parametrize("stepper, order", [("backward_euler", 1), ("bdf2", 2)])
def test_order_of_convergence(backend, stepper, order):
    """Fixed steps h, h/2, h/4, h/8 on a smooth stiff problem: the error at t=1 falls like h^p.
    (The problem is diagonal, so Jacobi-Newton is Newton here.)"""
    stiff = _stiff(backend)
    system = _custom_system(backend, _pr_rhs, 3, _pr_diag)
    y0 = backend.asarray(np.sin(PR_PHASE)[None])
    exact = np.sin(1.0 + PR_PHASE)
    errors = []
    for k in range(4):
        sol = stiff.solve(
            system, y0, (0.0, 1.0), stepper=stepper, root_finder="jacobi_newton",
            step_size=0.05 / 2**k, rtol=1e-12, atol=1e-12, root_tol=1e-3,
        )  # fmt: skip
        errors.append(np.abs(_np(backend, sol.ys[-1, 0]) - exact).max())
    observed = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(observed - order) < 0.15), f"observed orders {observed} for {stepper}"


# --- root finders ----------------------------------------------------------------------------


def _stiff_linear(d: int = 6):
    """A = -diag(lambda) + E: rates 1..1e4, weak off-diagonal coupling (diagonally dominant)."""
    rng = np.random.default_rng(0)
    a = -np.diag(np.logspace(0, 4, d)) + 0.1 * rng.uniform(-1, 1, (d, d)) * (1 - np.eye(d))
    return a, rng.standard_normal((2, d))


@pytest.mark.parametrize("finder", ["newton", "jacobi_newton", "fixed_point"])
def test_root_finder_solves_stiff_linear_system(backend, finder):
    """y - c A y = r for c = 1 (c * |lambda| up to 1e4); fixed-point iteration contracts only
    for c |A| < 1, so it must report failure at c = 1 and solve at c = 1e-5."""
    stiff = _stiff(backend)
    a, r = _stiff_linear()
    system = _custom_system(
        backend,
        lambda t, y, xp: y @ xp.asarray(a.T, dtype=y.dtype),
        a.shape[0],
        lambda t, y, xp: 0 * y + xp.asarray(np.diag(a).copy(), dtype=y.dtype),
    )
    opts = {"root_finder": finder, "rtol": 1e-8, "atol": 1e-8, "root_tol": 1e-4, "max_iters": 50}
    c_values = (1.0, 1e-5) if finder == "fixed_point" else (1.0,)
    for c in c_values:
        rhs = backend.asarray(r)
        out = stiff.find_root(system, 0.0, rhs, c, backend.asarray(np.zeros_like(r)), **opts)
        exact = np.linalg.solve(np.eye(a.shape[0]) - c * a, r.T).T
        if finder == "fixed_point" and c == 1.0:
            assert not bool(out.converged)
            continue
        assert bool(out.converged), f"{finder} did not converge at c={c}"
        np.testing.assert_allclose(_np(backend, out.y), exact, rtol=1e-9, atol=1e-11)
        assert int(out.nfe) == int(out.n_iters)
    if finder == "newton":  # linear: exact after one iteration, the second confirms it
        assert int(out.n_iters) == 2 and int(out.n_jac) == 2


def test_root_finder_registry():
    """Both backends register the same root finder classes, under the names the solvers
    accept, with the same methods; unknown names are refused by name."""
    from impls import _stiff as shared

    methods = ("start", "update", "refactor", "direction")
    registries = []
    for name in ("torch", "jax"):
        stiff = pytest.importorskip(f"impls.{name}_backend.stiff")
        registries.append({key: cls.__name__ for key, cls in stiff.ROOT_FINDERS.items()})
        assert tuple(stiff.ROOT_FINDERS) == shared.ROOT_FINDERS
        for key, cls in stiff.ROOT_FINDERS.items():
            assert cls.name == key and all(callable(getattr(cls, m)) for m in methods)
        assert [k for k, cls in stiff.ROOT_FINDERS.items() if cls.needs_diag] == ["jacobi_newton"]
    assert registries[0] == registries[-1]
    assert set(registries[0].values()) == {"FixedPoint", "Newton", "JacobiNewton"}


@pytest.mark.parametrize("backend_name", ["torch", "jax"])
@pytest.mark.parametrize(
    ("module", "function", "options"),
    [
        ("stiff", "solve", "impls._stiff.Options"),
        ("stiff", "find_root", "impls._stiff.RootOptions"),
        ("sde", "fit", "impls.sde.FitOptions"),
        ("cnf", "train", "impls.cnf.TrainOptions"),
    ],
)
def test_keyword_signatures_match_their_options(backend_name, module, function, options):
    """Each backend's public keywords are its shared options dataclass's fields, in order and
    with the same defaults: the functions pass them on positionally, in signature order."""
    import dataclasses
    import inspect

    fn = getattr(pytest.importorskip(f"impls.{backend_name}_backend.{module}"), function)
    owner, _, name = options.rpartition(".")
    fields = dataclasses.fields(getattr(importlib.import_module(owner), name))
    keywords = [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY]
    assert [p.name for p in keywords] == [f.name for f in fields]
    assert [p.default for p in keywords] == [f.default for f in fields]


@pytest.mark.parametrize("finder", ["broyden", "Newton", ""])
def test_find_root_refuses_unknown_finders(backend, finder):
    stiff = _stiff(backend)
    y = backend.asarray(np.ones((1, 3)))
    with pytest.raises(ValueError, match=f"unknown root finder {finder!r}; available: fixed_point"):
        stiff.find_root(stiff.ProblemSystem(robertson()), 0.0, y, 0.1, y, root_finder=finder)


# --- against scipy ---------------------------------------------------------------------------

SCIPY_CASES = {"robertson": robertson(t1=40.0), "van_der_pol": van_der_pol(t1=500.0)}
SCALED_ERROR_BOUND = 100.0  # measured 9-11 at rtol 1e-4 and 51-67 at 1e-6


def _scaled_error(y: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> float:
    return float(np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref))))


@pytest.mark.parametrize("finder", ["newton", "jacobi_newton"])
@pytest.mark.parametrize("name", sorted(SCIPY_CASES))
def test_matches_scipy(backend, name, finder):
    """Adaptive BDF2 at rtol 1e-4 and 1e-6 against Radau at rtol 1e-10: within 100x the
    requested tolerance, and 100x tighter, the error falls (by 100^(2/3) ~ 22x for an
    order-2 method; asserted >= 8x)."""
    stiff, problem = _stiff(backend), SCIPY_CASES[name]
    system, y0 = stiff.ProblemSystem(problem), backend.asarray(problem.y0[None])
    ref = reference(problem)[-1]
    errors = []
    for rtol in (1e-4, 1e-6):
        atol = problem.atol(rtol)
        sol = stiff.solve(system, y0, problem.t_span, root_finder=finder, rtol=rtol, atol=atol)
        stats = stiff.summarize(sol.stats)
        assert stats["success"] and stats["n_failed"] == 0
        y = _np(backend, sol.ys[-1, 0])
        scaled = _scaled_error(y, ref, rtol, atol)
        assert scaled < SCALED_ERROR_BOUND, f"scaled error {scaled:.1f} at rtol {rtol}"
        errors.append(np.abs(y - ref).max())
    assert errors[1] < errors[0] / 8, f"errors {errors} do not fall with the tolerance"


# --- Jacobi-Newton reaches Newton's solution -------------------------------------------------


def _hollow_system(backend, d: int = 6, stiffness: float = 1e3):
    problem = hollow_problem(d, stiffness=stiffness, t1=1.0)
    return _stiff(backend).HollowSystem.from_problem(problem, backend.device), problem


def _classic_system(backend):
    problem = hires(t1=4.0)
    return _stiff(backend).ProblemSystem(problem), problem


@pytest.mark.parametrize("make", [_hollow_system, _classic_system], ids=["hollow", "hires"])
def test_jacobi_newton_matches_newton(backend, make):
    """With fixed steps both solve the same discrete equations: the trajectories agree to the
    root-finding tolerance, whatever the iteration took to get there."""
    stiff = _stiff(backend)
    system, problem = make(backend)
    y0 = backend.asarray(problem.y0[None])
    ts = np.linspace(*problem.t_span, 5)
    runs = {}
    for finder in ("newton", "jacobi_newton"):
        sol = stiff.solve(
            system, y0, ts, root_finder=finder, step_size=0.02, rtol=1e-8, atol=1e-10,
            root_tol=1e-3,
        )  # fmt: skip
        stats = stiff.summarize(sol.stats)
        assert stats["n_failed"] == 0 and stats["success"]
        runs[finder] = (_np(backend, sol.ys), stats)
    np.testing.assert_allclose(runs["jacobi_newton"][0], runs["newton"][0], rtol=1e-8, atol=1e-10)
    assert runs["jacobi_newton"][1]["n_jac"] == 0 and runs["newton"][1]["n_diag"] == 0
    assert runs["jacobi_newton"][1]["n_diag"] == runs["jacobi_newton"][1]["n_iters"]


def test_hollow_diagonal_is_the_jacobians(backend):
    system, problem = _hollow_system(backend)
    y = backend.asarray(np.random.default_rng(3).standard_normal((3, problem.dim)))
    diag, jac = _diag_and_jacobian(backend, system, y)
    np.testing.assert_allclose(diag, np.diagonal(jac, axis1=1, axis2=2), atol=1e-12)


@pytest.mark.parametrize("name", ["robertson", "van_der_pol", "hires", "brusselator"])
def test_analytic_diagonals(backend, name):
    """Every classic problem's analytic D_dim f is its autodiff Jacobian's diagonal, and the
    Brusselator's Jacobian lies inside the sparsity pattern handed to scipy."""
    problem = make_problem(name, **({"n": 3} if name == "brusselator" else {}))
    system = _stiff(backend).ProblemSystem(problem)
    y = backend.asarray(np.abs(np.random.default_rng(4).standard_normal((2, problem.dim))))
    diag, jac = _diag_and_jacobian(backend, system, y)
    np.testing.assert_allclose(diag, np.diagonal(jac, axis1=1, axis2=2), rtol=1e-12)
    if problem.jac_sparsity is not None:
        assert not np.any((jac != 0) & ~problem.jac_sparsity)


# --- options, statistics and failure ---------------------------------------------------------


def test_jacobian_reuse(backend):
    """Reusing the Jacobian changes the iteration, not the solution, and evaluates fewer:
    once per step ("step"), or only when the iteration stalls ("always")."""
    stiff = _stiff(backend)
    system, problem = _classic_system(backend)
    y0, ts = backend.asarray(problem.y0[None]), np.linspace(*problem.t_span, 5)
    opts = {"root_finder": "newton", "step_size": 0.02, "rtol": 1e-8, "atol": 1e-10}
    runs = {
        reuse: stiff.solve(system, y0, ts, **opts, root_tol=1e-3, reuse=reuse)
        for reuse in ("never", "step", "always")
    }
    stats = {reuse: stiff.summarize(sol.stats) for reuse, sol in runs.items()}
    for reuse in ("step", "always"):
        np.testing.assert_allclose(
            _np(backend, runs[reuse].ys), _np(backend, runs["never"].ys), rtol=1e-7, atol=1e-10
        )
    assert stats["step"]["n_jac"] == stats["step"]["n_steps"] < stats["never"]["n_jac"]
    assert 10 * stats["always"]["n_jac"] < stats["step"]["n_jac"]


def test_stats_add_up(backend):
    stiff = _stiff(backend)
    problem = robertson(t1=1.0)
    sol = stiff.solve(
        stiff.ProblemSystem(problem), backend.asarray(problem.y0[None]), problem.t_span,
        root_finder="jacobi_newton", rtol=1e-4, atol=problem.atol(1e-4),
    )  # fmt: skip
    s = stiff.summarize(sol.stats)
    assert s["n_steps"] == s["n_accepted"] + s["n_rejected"] + s["n_failed"]
    assert s["nfe"] == s["n_iters"] + 2  # f(t0, y0) and the starting-step heuristic
    assert s["n_diag"] == s["n_iters"] and s["n_jac"] == s["n_lu"] == 0
    assert s["success"] and s["t_final"] == 1.0


def test_max_steps_stops_cleanly(backend):
    """Fixed-point iteration on a stiff problem: the step size collapses, the run stops at
    max_steps with success False, and the unreached outputs are NaN."""
    stiff = _stiff(backend)
    problem = robertson(t1=10.0)
    sol = stiff.solve(
        stiff.ProblemSystem(problem), backend.asarray(problem.y0[None]), (0.0, 1.0, 10.0),
        root_finder="fixed_point", rtol=1e-4, atol=problem.atol(1e-4), max_steps=50,
    )  # fmt: skip
    stats = stiff.summarize(sol.stats)
    assert not stats["success"] and stats["n_steps"] == 50 and stats["t_final"] < 1.0
    ys = _np(backend, sol.ys)
    assert np.all(np.isfinite(ys[0])) and np.all(np.isnan(ys[1:]))


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step_size", [0.01, None], ids=["fixed", "adaptive"])
def test_torch_and_jax_agree(step_size):
    """Identical weights, identical arithmetic: the same trajectory and the same counts."""
    results = []
    for name in ("torch", "jax"):
        backend = backend_or_skip(name)
        system, problem = _hollow_system(backend, d=5)
        sol = _stiff(backend).solve(
            system, backend.asarray(problem.y0[None]), np.linspace(0.0, 1.0, 5),
            root_finder="jacobi_newton", step_size=step_size, rtol=1e-4, atol=1e-6,
        )  # fmt: skip
        results.append((_np(backend, sol.ys), _stiff(backend).summarize(sol.stats)))
    (torch_ys, torch_stats), (jax_ys, jax_stats) = results
    np.testing.assert_allclose(torch_ys, jax_ys, rtol=0, atol=1e-10)
    counts = ("n_steps", "n_accepted", "n_rejected", "n_failed", "n_iters", "nfe", "n_diag")
    assert {k: torch_stats[k] for k in counts} == {k: jax_stats[k] for k in counts}


def test_batch_rows_are_independent_with_fixed_steps(backend):
    """A batch is a set of independent problems sharing one step sequence: with fixed steps
    each row equals its own solve."""
    stiff = _stiff(backend)
    system, problem = _hollow_system(backend, d=5)
    y0 = np.stack([problem.y0, -problem.y0])
    opts = {"root_finder": "jacobi_newton", "step_size": 0.05, "rtol": 1e-8, "atol": 1e-10}
    both = _np(backend, stiff.solve(system, backend.asarray(y0), (0.0, 0.5), **opts).ys)
    for i in range(2):
        alone = _np(
            backend, stiff.solve(system, backend.asarray(y0[i : i + 1]), (0.0, 0.5), **opts).ys
        )
        np.testing.assert_allclose(both[:, i], alone[:, 0], rtol=1e-9, atol=1e-11)


# --- diffrax ---------------------------------------------------------------------------------


def test_diffrax_kvaerno5_with_jacobi_newton():
    """Jacobi-Newton as Kvaerno5's root finder on the HollowNet system matches the scipy
    reference (Kvaerno5 is order 5: the global error stays near the tolerance)."""
    pytest.importorskip("diffrax")
    pytest.importorskip("optimistix")
    import jax

    backend = backend_or_skip("jax")
    system, problem = _hollow_system(backend)
    rhs = jax.jit(lambda y: system.rhs(0.0, y[None])[0])
    jac = jax.jit(lambda y: system.jacobian(0.0, y[None])[0])
    ref = reference_solution(
        lambda t, y: np.asarray(rhs(y)), problem.y0, problem.t_span, atol=1e-12,
        jac=lambda t, y: np.asarray(jac(y)),
    )[-1]  # fmt: skip
    rtol = atol = 1e-6
    sol = _stiff(backend).diffrax_solve(
        system, backend.asarray(problem.y0[None]), problem.t_span, rtol=rtol, atol=atol
    )
    assert bool(sol.stats["success"])
    scaled = _scaled_error(_np(backend, sol.ys[-1, 0]), ref, rtol, atol)
    assert scaled < 10, f"scaled error {scaled:.1f}"


# --- bad input -------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"stepper": "rk4"}, ValueError, "unknown stepper 'rk4'"),
    ({"root_finder": "broyden"}, ValueError, "unknown root finder 'broyden'"),
    ({"reuse": "sometimes"}, ValueError, "unknown reuse 'sometimes'"),
    ({"root_finder": "fixed_point", "reuse": "step"}, ValueError, "fixed_point has no Jacobian"),
    ({"rtol": 0.0}, ValueError, "rtol must be in"),
    ({"rtol": 2.0}, ValueError, "rtol must be in"),
    ({"rtol": float("nan")}, ValueError, "rtol must be finite"),
    ({"rtol": "1e-6"}, TypeError, "rtol must be a real number"),
    ({"atol": 0.0}, ValueError, "atol must be > 0"),
    ({"atol": True}, TypeError, "atol must be a real number"),
    ({"root_tol": -1.0}, ValueError, "root_tol must be > 0"),
    ({"max_iters": 0}, ValueError, "max_iters must be >= 1"),
    ({"max_iters": 2.5}, TypeError, "max_iters must be an int"),
    ({"max_steps": 0}, ValueError, "max_steps must be >= 1"),
    ({"step_size": -0.1}, ValueError, "step_size must be in"),
    ({"step_size": 5.0}, ValueError, "step_size must be in"),
]


@pytest.mark.parametrize("options, error, words", BAD_OPTIONS)
def test_bad_options(backend, options, error, words):
    stiff = _stiff(backend)
    problem = robertson(t1=1.0)
    y0 = backend.asarray(problem.y0[None])
    with pytest.raises(error, match=words):
        stiff.solve(stiff.ProblemSystem(problem), y0, problem.t_span, **options)


@pytest.mark.parametrize(
    "y0, ts, error, words",
    [
        (np.ones(3), (0.0, 1.0), ValueError, r"y0 must have shape \(batch, 3\)"),
        (np.ones((1, 4)), (0.0, 1.0), ValueError, r"y0 must have shape \(batch, 3\)"),
        (np.ones((0, 3)), (0.0, 1.0), ValueError, "at least one state"),
        (np.ones((1, 3), dtype=np.int64), (0.0, 1.0), TypeError, "float32 or float64"),
        (np.full((1, 3), np.nan), (0.0, 1.0), ValueError, "NaN or inf"),
        (np.ones((1, 3)), (1.0,), ValueError, "at least one output time"),
        (np.ones((1, 3)), (0.0, 1.0, 0.5), ValueError, "strictly increasing"),
        (np.ones((1, 3)), (0.0, float("inf")), ValueError, "finite"),
        (np.ones((1, 3)), 1.0, TypeError, "ts must be a sequence"),
    ],
)
def test_bad_state_and_times(backend, y0, ts, error, words):
    stiff = _stiff(backend)
    with pytest.raises(error, match=words):
        stiff.solve(stiff.ProblemSystem(robertson()), backend.asarray(y0), ts)


def test_bad_system_and_problems(backend):
    stiff = _stiff(backend)
    no_diag = stiff.System(lambda t, y: -y, 2)
    y0 = backend.asarray(np.ones((1, 2)))
    with pytest.raises(ValueError, match="jacobi_newton needs a Jacobian diagonal"):
        stiff.solve(no_diag, y0, (0.0, 1.0), root_finder="jacobi_newton")
    with pytest.raises(TypeError, match="states must be"):
        stiff.solve(no_diag, np.ones((1, 2)), (0.0, 1.0), root_finder="newton")
    with pytest.raises(ValueError, match="unknown problem 'oregonator'"):
        make_problem("oregonator")
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        brusselator(n=1)
    with pytest.raises(ValueError, match="stiffness must be >= 1"):
        hollow_problem(4, stiffness=0.5)
    if backend.name == "jax":
        pytest.importorskip("diffrax")
        with pytest.raises(ValueError, match="unknown solver 'radau'"):
            stiff.diffrax_solve(no_diag, y0, (0.0, 1.0), solver="radau", root_finder="newton")


# --- the benchmark grid ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["quick", "paper", "full"])
def test_bench_grid_is_valid(preset):
    """Every row of bench/workloads/ode.py's grid builds its problem and passes the solver's checks;
    quick stays a handful of points."""
    from bench.workloads import ode
    from impls import _stiff

    rows = ode.PRESETS[preset].rows
    for row in rows:
        point = ode.OdePoint("torch", "cpu", *row)
        problem = ode.build_problem(point, ode.PRESETS[preset])
        assert problem.dim == point.d
        if point.method in ode.DIFFRAX_METHODS:
            assert point.root_finder in ("newton", "jacobi_newton")
        else:
            _stiff.check_method(point.method, point.root_finder, point.reuse)
        _stiff.check_tolerances(point.rtol, problem.atol(point.rtol), 1e-2, 20)
    assert len(rows) == len(set(rows))
    if preset == "quick":
        assert len(rows) <= 8
