"""Implicit solvers for stiff ODEs in JAX: backward Euler and variable-step BDF2, fixed step or
adaptive, each with a pluggable root finder for its implicit stage.

The API and the arithmetic are those of the PyTorch backend's ``stiff`` module (see its
docstring); here everything is pure and traceable: ``solve`` runs as nested
``lax.while_loop``s, compiled once per system structure and static configuration (stepper,
root finder, reuse, max_iters, max_steps, fixed/adaptive, number of output times), while the
times and tolerances are traced, so tolerance sweeps do not recompile.

:func:`diffrax_solve` runs diffrax's implicit Runge-Kutta solvers (``Kvaerno5`` ...) with
Jacobi-Newton as their root finder (:func:`jacobi_newton_root_finder`), where optimistix is
installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import lu_factor, lu_solve

from impls import _stiff
from impls._stiff import summarize
from impls.jax_backend import operators
from impls.stiff_problems import HollowProblem, Problem

__all__ = [
    "ROOT_FINDERS",
    "FixedPoint",
    "HollowSystem",
    "JacobiNewton",
    "Newton",
    "ProblemSystem",
    "RootResult",
    "Solution",
    "System",
    "diffrax_solve",
    "find_root",
    "jacobi_newton_root_finder",
    "solve",
    "summarize",
]

_RUNNING, _CONVERGED, _FAILED = 0, 1, 2


class _SystemBase(eqx.Module):
    """A vector field ``rhs(t, y)`` on (batch, dim) states with its Jacobian diagonal
    ``diag(t, y)`` = D_dim f, (batch, dim). The dense Jacobian is ``vmap(jacfwd)``."""

    def rhs(self, t: jax.Array, y: jax.Array) -> jax.Array:
        raise NotImplementedError

    def diag(self, t: jax.Array, y: jax.Array) -> jax.Array:
        raise NotImplementedError

    @property
    def has_diag(self) -> bool:
        return True

    def jacobian(self, t: jax.Array, y: jax.Array) -> jax.Array:
        """Per-sample Jacobians, (batch, dim, dim)."""
        return jax.vmap(jax.jacfwd(lambda row: self.rhs(t, row[None])[0]))(y)


class System(_SystemBase):
    """A custom vector field from callables (hashable: they are static); ``diag=None`` means
    jacobi_newton cannot be used."""

    rhs_fn: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    diag_fn: Callable | None = eqx.field(static=True, default=None)
    name: str = eqx.field(static=True, default="custom")

    def rhs(self, t, y):
        return self.rhs_fn(t, y)

    def diag(self, t, y):
        if self.diag_fn is None:
            raise ValueError(f"system {self.name!r} has no Jacobian diagonal: pass diag_fn=...")
        return self.diag_fn(t, y)

    @property
    def has_diag(self) -> bool:
        return self.diag_fn is not None


class ProblemSystem(_SystemBase):
    """A classic problem of :mod:`impls.stiff_problems`, with its analytic diagonal."""

    problem: Problem = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.problem.dim

    @property
    def name(self) -> str:
        return self.problem.name

    def rhs(self, t, y):
        return self.problem.rhs(t, y, jnp)

    def diag(self, t, y):
        return self.problem.diag(t, y, jnp)


class HollowSystem(_SystemBase):
    """``f(x) = -diag(lambdas) x + g(x)`` with g a HollowNet; ``D_dim f = -lambdas + D_dim g``
    through the hollow operator (one pass), whatever the dimension."""

    net: eqx.Module
    lambdas: jax.Array
    name: str = eqx.field(static=True, default="hollow")

    def __init__(self, net: eqx.Module, lambdas: Any):
        param = next(iter(net.params.values()))
        self.net = net
        self.lambdas = jax.device_put(
            jnp.asarray(lambdas, dtype=param.dtype), param.devices().pop()
        )

    @property
    def dim(self) -> int:
        return self.net.spec.dim

    def rhs(self, t, y):
        return self.net(y) - self.lambdas * y

    def diag(self, t, y):
        return operators.ddim(self.net, y, method="hollow") - self.lambdas

    @classmethod
    def from_problem(cls, problem: HollowProblem, device: str = "cpu") -> HollowSystem:
        from impls.jax_backend import JaxBackend

        return cls(JaxBackend(device).build(problem.spec, problem.seed), problem.lambdas)


class Solution(NamedTuple):
    """``ys[i]`` (batch, dim) at ``ts[i]`` (NaN past a stop at max_steps); ``stats``: the
    counters of ``_stiff.STATS`` plus ``success`` and ``t_final``, as arrays."""

    ts: jax.Array
    ys: jax.Array
    stats: dict


class RootResult(NamedTuple):
    y: jax.Array
    converged: jax.Array
    n_iters: jax.Array
    nfe: jax.Array
    n_jac: jax.Array
    n_diag: jax.Array
    n_lu: jax.Array


def _wrms(x: jax.Array) -> jax.Array:
    """The largest per-sample root-mean-square: samples share steps but none is diluted."""
    return jnp.sqrt(jnp.mean(x * x, axis=-1)).max()


def _counts() -> dict[str, jax.Array]:
    return {key: jnp.zeros((), jnp.int32) for key in _stiff.RUN_STATS}


# --- root finders: the PyTorch backend's classes as pytrees (the while loops carry them) -----


class FixedPoint(eqx.Module):
    """y <- r + c f(y): the update is the residual itself (no derivative)."""

    name: ClassVar[str] = "fixed_point"
    needs_diag: ClassVar[bool] = False
    c: jax.Array  # the c the linearisation was made (factored) for
    stale: jax.Array  # re-evaluate before the next use ("always" reuse)
    n_jac: jax.Array
    n_diag: jax.Array
    n_lu: jax.Array

    @classmethod
    def start(cls, y: jax.Array) -> FixedPoint:
        zero = jnp.zeros((), jnp.int32)
        return cls(jnp.asarray(jnp.nan, y.dtype), jnp.asarray(True), zero, zero, zero)

    def update(self, system, t, y, c) -> FixedPoint:
        """Re-evaluate the linearisation at (t, y)."""
        return replace(self, c=c, stale=jnp.asarray(False))

    def refactor(self, c) -> FixedPoint:
        """Reuse the linearisation for a new c."""
        return replace(self, c=c)

    def direction(self, residual: jax.Array) -> jax.Array:
        return residual


class JacobiNewton(FixedPoint):
    """y <- y - F(y) / (1 - c D_dim f(y)): the Jacobian diagonal."""

    name: ClassVar[str] = "jacobi_newton"
    needs_diag: ClassVar[bool] = True
    d: jax.Array | None = None

    @classmethod
    def start(cls, y):
        return replace(super().start(y), d=jnp.zeros_like(y))

    def update(self, system, t, y, c):
        return replace(
            self, c=c, stale=jnp.asarray(False), d=system.diag(t, y), n_diag=self.n_diag + 1
        )

    def direction(self, residual):
        return residual / (1 - self.c * self.d)


class Newton(FixedPoint):
    """y <- y - (I - c J(y))^{-1} F(y): the dense Jacobian and its LU."""

    name: ClassVar[str] = "newton"
    jac: jax.Array | None = None
    lu: jax.Array | None = None
    piv: jax.Array | None = None

    @classmethod
    def start(cls, y):
        batch, d = y.shape
        square = jnp.zeros((batch, d, d), y.dtype)
        piv = jnp.zeros((batch, d), jnp.int32)
        return replace(super().start(y), jac=square, lu=square, piv=piv)

    def update(self, system, t, y, c):
        jac = system.jacobian(t, y)
        return replace(self, stale=jnp.asarray(False), jac=jac, n_jac=self.n_jac + 1)._factor(c)

    def refactor(self, c):
        return lax.cond(c != self.c, lambda: self._factor(c), lambda: self)

    def _factor(self, c) -> Newton:
        lu, piv = lu_factor(jnp.eye(self.jac.shape[-1], dtype=self.jac.dtype) - c * self.jac)
        return replace(self, c=c, lu=lu, piv=piv.astype(jnp.int32), n_lu=self.n_lu + 1)

    def direction(self, residual):
        return lu_solve((self.lu, self.piv), residual[..., None])[..., 0]


ROOT_FINDERS = {finder.name: finder for finder in (FixedPoint, Newton, JacobiNewton)}


def _iterate(system, t, rhs, c, y, cfg: _stiff.Config, tol: _stiff.Tol, finder: FixedPoint):
    """Solve y - c f(t, y) = rhs from the guess y: (y, converged, iterations, finder).

    Same rule as the PyTorch backend: converged when theta/(1-theta) * |dy| <= root_tol (from
    the second iteration on) or dy == 0; failed on a non-finite update, theta >= 1 or
    max_iters.
    """
    if cfg.reuse == "step":
        finder = finder.update(system, t, y, c)
    elif cfg.reuse == "always":
        finder = lax.cond(
            finder.stale, lambda: finder.update(system, t, y, c), lambda: finder.refactor(c)
        )

    def body(carry):
        k, y, previous, _, finder = carry
        if cfg.reuse == "never":
            finder = finder.update(system, t, y, c)
        delta = finder.direction(y - c * system.rhs(t, y) - rhs)
        y = y - delta
        size = _wrms(delta / (tol.atol + tol.rtol * jnp.abs(y)))
        theta = size / previous  # 0 at the first iteration: previous is inf
        failed = ~jnp.isfinite(size) | (theta >= 1)
        converged = (size == 0) | ((k > 0) & (size * theta / (1 - theta) <= tol.root_tol))
        status = jnp.where(failed, _FAILED, jnp.where(converged, _CONVERGED, _RUNNING))
        return k + 1, y, size, status, finder

    def running(carry):
        k, _, _, status, _ = carry
        return (status == _RUNNING) & (k < cfg.max_iters)

    inf = jnp.asarray(jnp.inf, y.dtype)
    start = (jnp.zeros((), jnp.int32), y, inf, jnp.asarray(_RUNNING), finder)
    k, y, _, status, finder = lax.while_loop(running, body, start)
    return y, status == _CONVERGED, k, finder


def find_root(
    system: _SystemBase,
    t: Any,
    rhs: jax.Array,
    c: Any,
    y_guess: jax.Array,
    *,
    root_finder: str = "jacobi_newton",
    reuse: str = "never",
    rtol: float = _stiff.DEFAULTS["rtol"],
    atol: float = _stiff.DEFAULTS["atol"],
    root_tol: float = _stiff.DEFAULTS["root_tol"],
    max_iters: int = _stiff.DEFAULTS["max_iters"],
) -> RootResult:
    """Solve ``y - c f(t, y) = rhs`` for y (batch, dim), starting from ``y_guess``."""
    _stiff.check_method("backward_euler", root_finder, reuse)
    _stiff.check_tolerances(rtol, atol, root_tol, max_iters)
    _check_state(system, y_guess)
    _check_state(system, rhs)
    _stiff.check_diag(ROOT_FINDERS[root_finder], system)
    cfg = _stiff.Config("backward_euler", root_finder, reuse, max_iters)
    return _find_root(system, t, rhs, c, y_guess, _tol(rtol, atol, root_tol, y_guess.dtype), cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _find_root(system, t, rhs, c, y, tol: _stiff.Tol, cfg: _stiff.Config) -> RootResult:
    t, c = jnp.asarray(t, y.dtype), jnp.asarray(c, y.dtype)
    finder = ROOT_FINDERS[cfg.root_finder].start(y)
    y, ok, k, finder = _iterate(system, t, rhs, c, y, cfg, tol, finder)
    return RootResult(y, ok, k, k, finder.n_jac, finder.n_diag, finder.n_lu)


def _tol(rtol: float, atol: float, root_tol: float, dtype) -> _stiff.Tol:
    return _stiff.Tol(*(jnp.asarray(v, dtype) for v in (rtol, atol, root_tol)))


def _check_state(system, y: Any) -> None:
    if not isinstance(y, jax.Array):
        raise TypeError(f"states must be jax.Arrays, got {type(y).__name__}")
    _stiff.check_state(tuple(y.shape), y.dtype.name, system.dim)


def _check_finite(y0: jax.Array) -> None:
    if isinstance(y0, jax.core.Tracer):
        return
    if not bool(jnp.isfinite(y0).all()):
        raise ValueError("y0 contains NaN or inf")


def solve(
    system: _SystemBase,
    y0: jax.Array,
    ts: Sequence[float],
    *,
    stepper: str = "bdf2",
    root_finder: str = "jacobi_newton",
    reuse: str = "never",
    rtol: float = _stiff.DEFAULTS["rtol"],
    atol: float = _stiff.DEFAULTS["atol"],
    step_size: float | None = None,
    root_tol: float = _stiff.DEFAULTS["root_tol"],
    max_iters: int = _stiff.DEFAULTS["max_iters"],
    max_steps: int = _stiff.DEFAULTS["max_steps"],
) -> Solution:
    """Integrate ``y' = system.rhs(t, y)`` from ``y0`` (batch, dim) at ``ts[0]`` through the
    output times ``ts``: ys (len(ts), batch, dim), ``ys[0] = y0``. Arguments and semantics
    as in the PyTorch backend's ``solve``; traceable (``y0`` and the system may be traced)."""
    times, h, cfg = _stiff.configure(
        ts, stepper, root_finder, reuse, rtol, atol, root_tol, max_iters, max_steps, step_size
    )
    _check_state(system, y0)
    _stiff.check_diag(ROOT_FINDERS[root_finder], system)
    _check_finite(y0)
    dtype = y0.dtype
    tol, step_size = _tol(rtol, atol, root_tol, dtype), jnp.asarray(h or 0.0, dtype)
    return _solve(system, y0, jnp.asarray(times, dtype), tol, step_size, cfg)


class _State(NamedTuple):
    t: jax.Array
    y: jax.Array
    d1: jax.Array  # [y_n, y_{n-1}], f(t0, y0) at the start
    d2: jax.Array  # [y_n, y_{n-1}, y_{n-2}]
    h1: jax.Array  # t_n - t_{n-1} (0 at the start)
    h2: jax.Array
    h: jax.Array  # proposed next step
    grow: jax.Array  # growth limit of the next step (1 after a rejection)
    idx: jax.Array  # next output time
    ys: jax.Array
    finder: FixedPoint
    counts: dict


@functools.partial(jax.jit, static_argnames="cfg")
def _solve(system, y0, ts, tol: _stiff.Tol, step_size, cfg: _stiff.Config) -> Solution:
    dtype = y0.dtype
    counts = _stiff.bump(_counts(), nfe=1)
    f0 = system.rhs(ts[0], y0)
    if cfg.adaptive:
        h, counts = _initial_step(system, ts[0], y0, f0, ts[-1] - ts[0], tol, counts)
    else:
        h = step_size
    ys = jnp.full((ts.shape[0], *y0.shape), jnp.nan, dtype).at[0].set(y0)
    zero = jnp.zeros((), dtype)
    state = _State(
        ts[0], y0, f0, jnp.zeros_like(y0), zero, zero, h,
        jnp.asarray(_stiff.FAC_MAX[cfg.stepper], dtype), jnp.ones((), jnp.int32), ys,
        ROOT_FINDERS[cfg.root_finder].start(y0), counts,
    )  # fmt: skip

    def running(s: _State):
        return (s.idx < ts.shape[0]) & (s.counts["n_steps"] < cfg.max_steps)

    s = lax.while_loop(running, lambda s: _step(system, s, ts, tol, step_size, cfg), state)
    finder = {key: getattr(s.finder, key) for key in _stiff.FINDER_STATS}
    stats = {**s.counts, **finder, "success": s.idx == ts.shape[0], "t_final": s.t}
    return Solution(ts, s.ys, stats)


def _weights(tol: _stiff.Tol, *ys: jax.Array) -> jax.Array:
    return tol.atol + tol.rtol * functools.reduce(jnp.maximum, [jnp.abs(y) for y in ys])


def _initial_step(system, t, y, f0, span, tol: _stiff.Tol, counts: dict):
    """Hairer & Wanner's starting step for order 1 (one extra f evaluation)."""
    scale = _weights(tol, y)
    d0, d1 = _wrms(y / scale), _wrms(f0 / scale)
    h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    h0 = jnp.minimum(h0, span)
    d2 = _wrms((system.rhs(t + h0, y + h0 * f0) - f0) / scale) / h0
    big = jnp.maximum(d1, d2)
    h1 = jnp.where(big <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), jnp.sqrt(0.01 / big))
    return jnp.minimum(jnp.minimum(100 * h0, h1), span), _stiff.bump(counts, nfe=1)


def _step(system, s: _State, ts, tol: _stiff.Tol, step_size, cfg: _stiff.Config) -> _State:
    """One step attempt (see the PyTorch backend's ``_Run._step``)."""
    target = ts[s.idx]
    landing = target - s.t <= s.h * (1 + _stiff.STRETCH)
    h_try = jnp.where(landing, target - s.t, s.h)
    second = (s.counts["n_accepted"] > 0).astype(s.y.dtype) if cfg.stepper == "bdf2" else 0.0
    beta, gamma, p2, ratio = _stiff.bdf_step(h_try, s.h1, s.h2, second)
    guess = s.y + h_try * s.d1 + p2 * s.d2
    rhs = s.y + (h_try * gamma) * s.d1
    y_new, ok, iters, finder = _iterate(
        system, s.t + h_try, rhs, h_try * beta, guess, cfg, tol, s.finder
    )
    counts = _stiff.bump(s.counts, n_steps=1, n_iters=iters, nfe=iters, n_failed=~ok)
    finder = replace(finder, stale=finder.stale | ~ok)
    if cfg.adaptive:
        error = _wrms(ratio * (y_new - guess) / _weights(tol, s.y, y_new))
        factor = _stiff.SAFETY * jnp.maximum(error, 1e-10) ** (-1 / (2 + second))
        accept = ok & (error <= 1)
        counts = _stiff.bump(counts, n_rejected=ok & (error > 1))
        shrink = jnp.where(ok, jnp.maximum(_stiff.FAC_MIN, factor), _stiff.FAIL_FACTOR)
        h_grow = jnp.minimum(s.grow, jnp.maximum(_stiff.FAC_MIN, factor))
        h_next = h_try * jnp.where(accept, h_grow, shrink)
        grow = jnp.where(accept, _stiff.FAC_MAX[cfg.stepper], 1.0).astype(s.grow.dtype)
    else:
        accept, h_next, grow = jnp.asarray(True), step_size, s.grow
    d1 = (y_new - s.y) / h_try
    d2 = (d1 - s.d1) / (h_try + s.h1)
    landed = accept & landing
    ys = s.ys.at[s.idx].set(jnp.where(landed, y_new, s.ys[s.idx]))
    keep = functools.partial(jnp.where, accept)
    return _State(
        t=keep(jnp.where(landing, target, s.t + h_try), s.t),
        y=keep(y_new, s.y),
        d1=keep(d1, s.d1),
        d2=keep(d2, s.d2),
        h1=keep(h_try, s.h1),
        h2=keep(s.h1, s.h2),
        h=h_next,
        grow=grow,
        idx=s.idx + landed.astype(jnp.int32),
        ys=ys,
        finder=finder,
        counts=_stiff.bump(counts, n_accepted=accept),
    )


# --- diffrax: Jacobi-Newton as the root finder of an implicit Runge-Kutta solver ------------


@jax.custom_jvp
def _jacobi_linearised(system: _SystemBase, t: jax.Array, y: jax.Array) -> jax.Array:
    return system.rhs(t, y)


@_jacobi_linearised.defjvp
def _jacobi_linearised_jvp(primals, tangents):
    # The tangent map is diag(D_dim f): the part of the Jacobian Jacobi-Newton keeps.
    system, t, y = primals
    return system.rhs(t, y), system.diag(t, y) * tangents[2]


@functools.cache
def _jacobi_newton_class() -> type:
    """Defined on first use, so that the module imports without optimistix."""
    import optimistix as optx

    class JacobiNewtonState(eqx.Module):
        diffsize: jax.Array
        diffsize_prev: jax.Array
        step: jax.Array

    class JacobiNewton(optx.AbstractRootFinder):
        """Jacobi-Newton root finding, y <- y - F(y) / diag(F'(y)), for residuals whose
        linearisation is diagonal: the diagonal is one JVP with tangent 1.

        Only correct as a Newton-type method on functions built from a vector field wrapped by
        :func:`jacobi_vector_field` (whose tangent map is ``diag(D_dim f)``); diffrax's implicit
        stage residuals ``z - vf(t, y_partial + a z)`` then have Jacobian ``1 - a D_dim f``.
        Termination as diffrax's ``VeryChord`` (at least two iterations; converged when
        theta/(1-theta) * size < kappa; diverged when the rate theta exceeds 2), except that
        the size of an update is normwise, ``norm(dz) / (atol + rtol * norm(z))``: diffrax
        iterates on stage derivatives z with the controller's y-space atol, so a componentwise
        test asks near-zero derivatives (Robertson's quasi-steady y2) for an accuracy a
        linearly converging method cannot reach, and the step size collapses.
        """

        rtol: float
        atol: float
        norm: Callable = optx.max_norm
        kappa: float = 1e-2

        def init(self, fn, y, args, options, f_struct, aux_struct, tags):
            del fn, args, options, f_struct, aux_struct, tags
            dtype = jnp.result_type(*jax.tree_util.tree_leaves(y))
            return JacobiNewtonState(
                jnp.asarray(jnp.inf, dtype), jnp.asarray(1.0, dtype), jnp.asarray(0)
            )

        def step(self, fn, y, args, options, state, tags):
            del options, tags
            ones = jax.tree_util.tree_map(jnp.ones_like, y)
            (fx, aux), (diag, _) = jax.jvp(lambda z: fn(z, args), (y,), (ones,))
            diff = jax.tree_util.tree_map(jnp.divide, fx, diag)
            new_y = jax.tree_util.tree_map(jnp.subtract, y, diff)
            size = self.norm(diff) / (self.atol + self.rtol * self.norm(new_y))
            new_state = JacobiNewtonState(size, state.diffsize, state.step + 1)
            return new_y, new_state, aux

        def terminate(self, fn, y, args, options, state, tags):
            del fn, y, args, options, tags
            rate = state.diffsize / state.diffsize_prev
            diverged = ~jnp.isfinite(rate) | (rate > 2)
            factor = state.diffsize * rate / (1 - rate)  # < 0 when not contracting
            converged = (factor > 0) & (factor < self.kappa)
            small = state.diffsize < 10 ** (2 - jnp.finfo(state.diffsize.dtype).precision)
            done = (state.step >= 2) & (small | diverged | converged)
            failed = (state.step >= 2) & ~small & (diverged | ~converged)
            return done, optx.RESULTS.where(
                failed, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful
            )

        def postprocess(self, fn, y, aux, args, options, state, tags, result):
            return y, aux, {}

    return JacobiNewton


def jacobi_newton_root_finder(**kwargs: Any):
    """An optimistix root finder doing Jacobi-Newton, its rtol/atol taken from diffrax's step
    size controller; for ``diffrax.Kvaerno5(root_finder=...)`` and the other implicit solvers,
    on a vector field from :func:`jacobi_vector_field`. Needs diffrax and optimistix
    (ImportError otherwise). ``kwargs``: ``kappa``."""
    import diffrax

    return diffrax.with_stepsize_controller_tols(_jacobi_newton_class())(**kwargs)


def jacobi_vector_field(system: _SystemBase) -> Callable:
    """``vf(t, y, args) = system.rhs(t, y)`` whose JVP is ``system.diag(t, y) * tangent``:
    to the root finder, the Jacobian is its diagonal. For solving only: differentiating a
    solve through it would use that approximation."""
    return lambda t, y, args: _jacobi_linearised(system, t, y)


DIFFRAX_SOLVERS = ("kvaerno3", "kvaerno4", "kvaerno5")


def diffrax_solve(
    system: _SystemBase,
    y0: jax.Array,
    ts: Sequence[float],
    *,
    solver: str = "kvaerno5",
    root_finder: str = "jacobi_newton",
    rtol: float = _stiff.DEFAULTS["rtol"],
    atol: float = _stiff.DEFAULTS["atol"],
    max_iters: int = _stiff.DEFAULTS["max_iters"],
    max_steps: int = _stiff.DEFAULTS["max_steps"],
) -> Solution:
    """``diffrax.diffeqsolve`` with an implicit ESDIRK (Kvaerno 3/4/5) and a PID controller,
    saving at ``ts``, with at most ``max_iters`` root-finder iterations per stage.

    ``root_finder``: "jacobi_newton" (:func:`jacobi_newton_root_finder` on
    :func:`jacobi_vector_field`), or "newton" (diffrax's default ``VeryChord``: one dense
    Jacobian per step). Stats: diffrax's step counts (``n_steps``, ``n_accepted``,
    ``n_rejected``), ``success`` and ``t_final``. Traceable.
    """
    import diffrax

    times = _stiff.check_times(ts)
    if solver not in DIFFRAX_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(DIFFRAX_SOLVERS)}")
    if root_finder not in ("newton", "jacobi_newton"):
        raise ValueError(f"unknown root finder {root_finder!r}; available: newton, jacobi_newton")
    _stiff.check_tolerances(rtol, atol, _stiff.DEFAULTS["root_tol"], max_iters)
    _stiff.check_steps(None, max_steps, times)
    _check_state(system, y0)
    _stiff.check_diag(ROOT_FINDERS[root_finder], system)
    _check_finite(y0)
    cls = getattr(diffrax, solver.capitalize())
    if root_finder == "jacobi_newton":
        term = diffrax.ODETerm(jacobi_vector_field(system))
        method = cls(root_finder=jacobi_newton_root_finder(), root_find_max_steps=max_iters)
    else:
        term = diffrax.ODETerm(lambda t, y, args: system.rhs(t, y))
        method = cls(root_find_max_steps=max_iters)
    ts_array = jnp.asarray(times, y0.dtype)
    sol = diffrax.diffeqsolve(
        term, method, times[0], times[-1], None, y0,
        saveat=diffrax.SaveAt(ts=ts_array),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )  # fmt: skip
    success = sol.result == diffrax.RESULTS.successful
    stats = {
        "n_steps": sol.stats["num_steps"],
        "n_accepted": sol.stats["num_accepted_steps"],
        "n_rejected": sol.stats["num_rejected_steps"],
        "success": success,
        "t_final": jnp.where(success, ts_array[-1], jnp.nan),
    }
    return Solution(ts_array, sol.ys, stats)
