"""Stiff test problems, their scipy references and error figures, framework-free: each
:class:`Problem`'s right-hand side and Jacobian diagonal are written once against an array
namespace ``xp`` (numpy, torch or jax.numpy: arithmetic, indexing, ``stack``, ``concatenate``,
``roll``), so scipy and both solvers integrate the very same equations on (batch, dim) states.

>>> p = robertson(t1=40.0)
>>> reference(p)                           # (1, 3): Radau at rtol 1e-10, at t1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from impls.spec import HollowSpec

REFERENCE_RTOL = 1e-10
# rtols of a work-precision sweep, loose to tight; atol follows as rtol * Problem.atol_scale.
RTOL_SWEEP = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)

Rhs = Callable[[Any, Any, Any], Any]  # (t, y (batch, d), xp) -> (batch, d)


@dataclass(frozen=True, eq=False)
class Problem:
    """A stiff initial value problem ``y' = rhs(t, y)``, ``y(t0) = y0``, with its analytic
    Jacobian diagonal ``diag``; below ``atol_scale`` a component is noise (atol = rtol *
    atol_scale); ``jac_sparsity`` (d, d) or None (dense) is handed to scipy's reference solver.
    """

    name: str
    y0: np.ndarray  # (d,)
    t_span: tuple[float, float]
    rhs: Rhs
    diag: Rhs
    atol_scale: float
    params: dict[str, float] = field(default_factory=dict)
    jac_sparsity: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.y0.shape[0]

    @property
    def key(self) -> tuple:
        """Identifies the problem for caching: name, parameters and time span."""
        return (self.name, tuple(sorted(self.params.items())), self.t_span)

    def atol(self, rtol: float) -> float:
        return rtol * self.atol_scale

    def __eq__(self, other: object) -> bool:
        # Value semantics (the same arguments build equal problems), so that JAX, which keys
        # its compilation cache on static fields, compiles a problem's solver once.
        if not isinstance(other, Problem):
            return NotImplemented
        return self.key == other.key and np.array_equal(self.y0, other.y0)

    def __hash__(self) -> int:
        return hash(self.key)


# --- Robertson: the chemical kinetics benchmark (Hairer & Wanner II, ROBER) -----------------


def _robertson_rhs(t, y, xp):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    fast, slow = 3e7 * y2 * y2, 1e4 * y2 * y3
    return xp.stack([-0.04 * y1 + slow, 0.04 * y1 - slow - fast, fast], -1)


def _robertson_diag(t, y, xp):
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    return xp.stack([0 * y1 - 0.04, -1e4 * y3 - 6e7 * y2, 0 * y3], -1)


def robertson(t1: float = 1e5) -> Problem:
    """Robertson's three-species reaction, y0 = (1, 0, 0), on [0, t1]; rates span 1e-2..1e7.
    y2 peaks at 3.6e-5, hence atol_scale 1e-6 (Hairer & Wanner use atol = 1e-6 * rtol)."""
    return Problem(
        "robertson",
        np.array([1.0, 0.0, 0.0]),
        (0.0, float(t1)),
        _robertson_rhs,
        _robertson_diag,
        atol_scale=1e-6,
    )


# --- Van der Pol, unscaled: y1' = y2, y2' = mu ((1 - y1^2) y2 - y1 / mu) --------------------


def _vdp_rhs(mu: float) -> tuple[Rhs, Rhs]:
    def rhs(t, y, xp):
        y1, y2 = y[..., 0], y[..., 1]
        return xp.stack([y2, mu * (1 - y1 * y1) * y2 - y1], -1)

    def diag(t, y, xp):
        y1 = y[..., 0]
        return xp.stack([0 * y1, mu * (1 - y1 * y1)], -1)

    return rhs, diag


def van_der_pol(mu: float = 1000.0, t1: float = 3000.0) -> Problem:
    """y1'' = mu (1 - y1^2) y1' - y1 from (2, 0); the relaxation period is ~(3 - 2 ln 2) mu."""
    rhs, diag = _vdp_rhs(float(mu))
    return Problem(
        "van_der_pol",
        np.array([2.0, 0.0]),
        (0.0, float(t1)),
        rhs,
        diag,
        atol_scale=1e-2,
        params={"mu": float(mu)},
    )


# --- HIRES: plant physiology, 8 states (Hairer & Wanner II; Schäfer 1975) -------------------


def _hires_rhs(t, y, xp):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[..., i] for i in range(8))
    r = 280.0 * y6 * y8
    return xp.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -r + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            r - 1.81 * y7,
            -r + 1.81 * y7,
        ],
        -1,
    )


def _hires_diag(t, y, xp):
    y6, y8 = y[..., 5], y[..., 7]
    zero = 0 * y6
    constant = [-1.71, -8.75, -10.03, -1.12, -1.745]
    return xp.stack(
        [zero + c for c in constant] + [-280.0 * y8 - 0.43, zero - 1.81, -280.0 * y6], -1
    )


def hires(t1: float = 321.8122) -> Problem:
    """HIRES on [0, 321.8122] (the standard end point), y0 = (1, 0, ..., 0, 0.0057)."""
    y0 = np.zeros(8)
    y0[0], y0[7] = 1.0, 0.0057
    return Problem("hires", y0, (0.0, float(t1)), _hires_rhs, _hires_diag, atol_scale=1e-4)


# --- 2-D Brusselator reaction-diffusion (Hairer & Wanner II, BRUSS-2D) ----------------------


def _bruss_fns(n: int, alpha: float, a: float, b: float) -> tuple[Rhs, Rhs]:
    diffusion = alpha * n * n  # alpha / dx^2 on the periodic unit square, dx = 1/n

    def split(y):
        lead = y.shape[:-1]
        return y[..., : n * n].reshape(*lead, n, n), y[..., n * n :].reshape(*lead, n, n), lead

    def laplacian(z, xp):
        rolled = xp.roll(z, 1, -1) + xp.roll(z, -1, -1) + xp.roll(z, 1, -2) + xp.roll(z, -1, -2)
        return diffusion * (rolled - 4 * z)

    def rhs(t, y, xp):
        u, v, lead = split(y)
        uuv = u * u * v
        du = b + uuv - (a + 1) * u + laplacian(u, xp)
        dv = a * u - uuv + laplacian(v, xp)
        return xp.concatenate([du.reshape(*lead, n * n), dv.reshape(*lead, n * n)], -1)

    def diag(t, y, xp):
        u, v, lead = split(y)
        du = 2 * u * v - (a + 1) - 4 * diffusion
        dv = -u * u - 4 * diffusion
        return xp.concatenate([du.reshape(*lead, n * n), dv.reshape(*lead, n * n)], -1)

    return rhs, diag


def _bruss_sparsity(n: int) -> np.ndarray:
    """Each state couples to its 4 periodic neighbours (same species) and the other species."""
    grid = np.arange(n * n).reshape(n, n)
    pattern = np.zeros((2 * n * n, 2 * n * n), dtype=bool)
    for axis in (0, 1):
        for shift in (1, -1):
            neighbour = np.roll(grid, shift, axis).ravel()
            for offset in (0, n * n):
                pattern[grid.ravel() + offset, neighbour + offset] = True
    cells = grid.ravel()
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        pattern[cells + i * n * n, cells + j * n * n] = True
    return pattern


def brusselator(
    n: int = 8, alpha: float = 1.0, t1: float = 10.0, a: float = 3.4, b: float = 1.0
) -> Problem:
    """u' = b + u^2 v - (a+1) u + alpha Lap u, v' = a u - u^2 v + alpha Lap v on an n x n
    periodic grid (d = 2 n^2, 5-point Laplacian). Hairer & Wanner's BRUSS-2D initial state
    u = 22 y (1-y)^1.5, v = 27 x (1-x)^1.5, without its t >= 1.1 forcing, which would make the
    solution non-smooth in t. The diffusion's stiffness grows like 8 alpha n^2."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x, indexing="xy")
    y0 = np.concatenate([(22 * yy * (1 - yy) ** 1.5).ravel(), (27 * xx * (1 - xx) ** 1.5).ravel()])
    rhs, diag = _bruss_fns(n, float(alpha), float(a), float(b))
    return Problem(
        "brusselator",
        y0,
        (0.0, float(t1)),
        rhs,
        diag,
        atol_scale=1e-2,
        params={"n": n, "alpha": float(alpha), "a": float(a), "b": float(b)},
        jac_sparsity=_bruss_sparsity(n),
    )


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "robertson": robertson,
    "van_der_pol": van_der_pol,
    "hires": hires,
    "brusselator": brusselator,
}


def make_problem(name: str, **params: Any) -> Problem:
    """The classic problem ``name`` (see ``PROBLEMS``) with its keyword parameters."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; available: {', '.join(PROBLEMS)}")
    return PROBLEMS[name](**params)


# --- the HollowNet-parameterised stiff system ------------------------------------------------


@dataclass(frozen=True, eq=False)
class HollowProblem:
    """Metadata of ``f(x) = -diag(lambdas) x + g(x)``, g the HollowNet ``spec``: ``lambdas``
    (d,) log-spaced over [1, stiffness], the ratio of the fastest to the slowest decay rate (g
    is O(1)-Lipschitz)."""

    spec: HollowSpec
    lambdas: np.ndarray  # (d,)
    y0: np.ndarray  # (d,)
    t_span: tuple[float, float]
    stiffness: float
    seed: int
    atol_scale: float = 1.0
    name: str = "hollow"

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def key(self) -> tuple:
        return (self.name, self.spec, self.stiffness, self.seed, self.t_span)

    def atol(self, rtol: float) -> float:
        return rtol * self.atol_scale


def hollow_problem(
    d: int, stiffness: float = 1e3, t1: float = 2.0, seed: int = 0, spec: HollowSpec | None = None
) -> HollowProblem:
    """The stiff HollowNet system at dimension d, y0 ~ N(0, I) from ``seed``; build g with
    ``B.build(p.spec, seed=p.seed)``."""
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    if not stiffness >= 1:
        raise ValueError(f"stiffness must be >= 1 (fastest / slowest rate), got {stiffness!r}")
    spec = spec or HollowSpec(
        dim=d, d_h=8, cond_hidden=(8,), trans_hidden=(32, 32), dtype="float64"
    )
    if spec.dim != d or spec.time_dependent:
        raise ValueError("spec must be an autonomous HollowSpec of dimension d")
    y0 = np.random.default_rng(seed).standard_normal(d)
    lambdas = np.logspace(0.0, np.log10(stiffness), d)
    return HollowProblem(spec, lambdas, y0, (0.0, float(t1)), float(stiffness), seed)


# --- references ------------------------------------------------------------------------------

_CACHE: dict[tuple, np.ndarray] = {}


def reference_solution(
    fun: Callable[[float, np.ndarray], np.ndarray],
    y0: np.ndarray,
    t_span: tuple[float, float],
    ts: Sequence[float] | None = None,
    *,
    atol: float,
    rtol: float = REFERENCE_RTOL,
    method: str = "Radau",
    jac: Callable | None = None,
    jac_sparsity: np.ndarray | None = None,
) -> np.ndarray:
    """scipy ``solve_ivp`` of ``y' = fun(t, y)`` (y (d,)) at ``ts`` (default: t1), (len(ts), d);
    RuntimeError when scipy fails: a reference must never silently be wrong."""
    from scipy.integrate import solve_ivp

    ts = np.asarray([t_span[1]] if ts is None else ts, dtype=float)
    sol = solve_ivp(
        fun,
        t_span,
        np.asarray(y0, dtype=float),
        method=method,
        t_eval=ts,
        rtol=rtol,
        atol=atol,
        jac=jac,
        jac_sparsity=jac_sparsity if jac is None else None,
    )
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return sol.y.T


def reference(problem: Problem, ts: Sequence[float] | None = None) -> np.ndarray:
    """The problem's reference at ``ts`` (default t1), (len(ts), d): Radau, rtol 1e-10 and
    atol 1e-12 * atol_scale; cached per problem and ``ts`` for the life of the process."""
    key = (problem.key, None if ts is None else tuple(float(t) for t in ts))
    if key not in _CACHE:
        _CACHE[key] = reference_solution(
            lambda t, y: problem.rhs(t, y[None], np)[0],
            problem.y0,
            problem.t_span,
            ts,
            atol=1e-12 * problem.atol_scale,
            jac_sparsity=problem.jac_sparsity,
        )
    return _CACHE[key]


# --- error figures ---------------------------------------------------------------------------


def error_metrics(y: np.ndarray, ref: np.ndarray, atol_scale: float = 1.0) -> dict[str, float]:
    """Errors of ``y`` against ``ref`` (same shape): ``error`` = max |y - ref|; ``error_rel`` =
    max |y - ref| / max(|ref|, 1e-6 * atol_scale), componentwise, so tiny species (Robertson's
    y2) count as much as large ones."""
    y, ref = np.asarray(y, dtype=float), np.asarray(ref, dtype=float)
    if y.shape != ref.shape:
        raise ValueError(f"solution shape {y.shape} does not match the reference {ref.shape}")
    diff = np.abs(y - ref)
    floor = np.maximum(np.abs(ref), 1e-6 * atol_scale)
    return {"error": float(diff.max()), "error_rel": float((diff / floor).max())}
