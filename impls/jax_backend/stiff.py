"""Implicit solvers for stiff ODEs in JAX, with the API and arithmetic of the PyTorch
backend's ``stiff`` module. ``solve`` is pure: nested ``lax.while_loop``s compiled once per
system structure and static configuration (:class:`impls._stiff.Config`, the number of
output times); times and tolerances are traced, so tolerance sweeps do not recompile.

:func:`diffrax_solve` runs diffrax's implicit Runge-Kutta solvers (``Kvaerno5`` ...), with
Jacobi-Newton as their root finder where asked (optimistix needed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import lu_factor, lu_solve

from impls import _stiff
from impls._stiff import RootResult, Solution
from impls._stiff import summarize as summarize  # the public name of both backends
from impls.jax_backend import operators
from impls.stiff_problems import HollowProblem, Problem


class _SystemBase(eqx.Module):
    """A vector field ``rhs(t, y)`` on (batch, dim) states with its Jacobian diagonal
    ``diag(t, y)`` = D_dim f, (batch, dim). The dense Jacobian is ``vmap(jacfwd)``."""

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


def _wrms(x: jax.Array) -> jax.Array:
    """The largest per-sample root-mean-square: samples share steps but none is diluted."""
    return jnp.sqrt(jnp.mean(x * x, axis=-1)).max()


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


def find_root(
    system: _SystemBase,
    t: Any,
    rhs: jax.Array,
    c: Any,
    y_guess: jax.Array,
    *,
    root_finder: str = _stiff.RootOptions.root_finder,
    reuse: str = _stiff.RootOptions.reuse,
    rtol: float = _stiff.RootOptions.rtol,
    atol: float = _stiff.RootOptions.atol,
    root_tol: float = _stiff.RootOptions.root_tol,
    max_iters: int = _stiff.RootOptions.max_iters,
) -> RootResult:
    """Solve ``y - c f(t, y) = rhs`` for y (batch, dim), starting from ``y_guess``."""
    opts = _stiff.RootOptions(root_finder, reuse, rtol, atol, root_tol, max_iters)
    _check_state(system, y_guess)
    _check_state(system, rhs)
    _stiff.check_diag(ROOT_FINDERS[opts.root_finder], system)
    tol = opts.tol(functools.partial(jnp.asarray, dtype=y_guess.dtype))
    return _find_root(system, t, rhs, c, y_guess, tol, opts.config())


@functools.partial(jax.jit, static_argnames="cfg")
def _find_root(system, t, rhs, c, y, tol: _stiff.Tol, cfg: _stiff.Config) -> RootResult:
    t, c = jnp.asarray(t, y.dtype), jnp.asarray(c, y.dtype)
    finder = ROOT_FINDERS[cfg.root_finder].start(y)
    y, ok, k, finder = _stiff.iterate(system, t, rhs, c, y, cfg, tol, finder, _OPS)
    return RootResult(y, ok, k, k, finder.n_jac, finder.n_diag, finder.n_lu)


def _check_state(system, y: Any) -> None:
    if not isinstance(y, jax.Array):
        raise TypeError(f"states must be jax.Arrays, got {type(y).__name__}")
    _stiff.check_state(tuple(y.shape), y.dtype.name, system.dim)


def solve(
    system: _SystemBase,
    y0: jax.Array,
    ts: Sequence[float],
    *,
    root_finder: str = _stiff.Options.root_finder,
    reuse: str = _stiff.Options.reuse,
    rtol: float = _stiff.Options.rtol,
    atol: float = _stiff.Options.atol,
    root_tol: float = _stiff.Options.root_tol,
    max_iters: int = _stiff.Options.max_iters,
    stepper: str = _stiff.Options.stepper,
    step_size: float | None = _stiff.Options.step_size,
    max_steps: int = _stiff.Options.max_steps,
) -> Solution:
    """The PyTorch backend's ``solve``; traceable (``y0`` and the system may be traced)."""
    opts = _stiff.Options(  # in the signature's order, which is the fields'
        root_finder, reuse, rtol, atol, root_tol, max_iters, stepper, step_size, max_steps
    )
    times, h, cfg = _stiff.configure(ts, opts)
    _check_state(system, y0)
    _stiff.check_diag(ROOT_FINDERS[opts.root_finder], system)
    operators.check_finite(y0, "y0")
    step_size = jnp.asarray(h or 0.0, y0.dtype)
    tol = opts.tol(functools.partial(jnp.asarray, dtype=y0.dtype))
    return _solve(system, y0, jnp.asarray(times, y0.dtype), tol, step_size, cfg)


def _weights(tol: _stiff.Tol, *ys: jax.Array) -> jax.Array:
    return tol.atol + tol.rtol * functools.reduce(jnp.maximum, [jnp.abs(y) for y in ys])


_OPS = _stiff.Ops(
    where=jnp.where,
    cond=lax.cond,
    while_loop=lax.while_loop,
    array=jnp.asarray,
    maximum=jnp.maximum,
    minimum=jnp.minimum,
    logical_not=jnp.logical_not,
    isfinite=jnp.isfinite,
    sqrt=jnp.sqrt,
    zeros_like=jnp.zeros_like,
    wrms=_wrms,
    weights=_weights,
    record=lambda ys, i, landed, y: ys.at[i].set(jnp.where(landed, y, ys[i])),
)


@functools.partial(jax.jit, static_argnames="cfg")
def _solve(system, y0, ts, tol: _stiff.Tol, step_size, cfg: _stiff.Config) -> Solution:
    ys = jnp.full((ts.shape[0], *y0.shape), jnp.nan, y0.dtype).at[0].set(y0)
    finder = ROOT_FINDERS[cfg.root_finder].start(y0)
    return Solution(ts, *_stiff.integrate(system, y0, ts, ys, cfg, tol, step_size, finder, _OPS))


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
        """y <- y - F(y) / diag(F'(y)), the diagonal from one JVP with tangent 1: Newton-type
        on the stage residuals ``z - vf(t, y + a z)`` of a :func:`jacobi_vector_field`.
        Terminates as diffrax's ``VeryChord``, except that an update's size is normwise,
        ``norm(dz) / (atol + rtol * norm(z))``: z are stage derivatives, and a componentwise
        test with the y-space atol asks Robertson's near-zero y2' for an accuracy a linearly
        converging method cannot reach, so the step size collapses.
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
    """Jacobi-Newton for ``diffrax.Kvaerno5(root_finder=...)`` and the other implicit solvers,
    on a :func:`jacobi_vector_field`; rtol/atol from the step size controller, ``kappa``."""
    import diffrax

    return diffrax.with_stepsize_controller_tols(_jacobi_newton_class())(**kwargs)


def jacobi_vector_field(system: _SystemBase) -> Callable:
    """``vf(t, y, args) = system.rhs(t, y)`` whose JVP is ``system.diag(t, y) * tangent``; for
    solving only (differentiating a solve through it would use that approximation)."""
    return lambda t, y, args: _jacobi_linearised(system, t, y)


DIFFRAX_SOLVERS = ("kvaerno3", "kvaerno4", "kvaerno5")


def diffrax_solve(
    system: _SystemBase,
    y0: jax.Array,
    ts: Sequence[float],
    *,
    solver: str = "kvaerno5",
    root_finder: str = "jacobi_newton",
    rtol: float = _stiff.Options.rtol,
    atol: float = _stiff.Options.atol,
    max_iters: int = _stiff.Options.max_iters,
    max_steps: int = _stiff.Options.max_steps,
) -> Solution:
    """``diffrax.diffeqsolve`` with an implicit ESDIRK (Kvaerno 3/4/5), a PID controller and
    at most ``max_iters`` root-finder iterations per stage, saving at ``ts``. ``root_finder``:
    "jacobi_newton", or "newton" (diffrax's ``VeryChord``). Stats: diffrax's step counts,
    ``success`` and ``t_final``. Traceable."""
    import diffrax

    times = _stiff.check_times(ts)
    if solver not in DIFFRAX_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(DIFFRAX_SOLVERS)}")
    if root_finder not in ("newton", "jacobi_newton"):
        raise ValueError(f"unknown root finder {root_finder!r}; available: newton, jacobi_newton")
    _stiff.Options(
        root_finder=root_finder, rtol=rtol, atol=atol, max_iters=max_iters, max_steps=max_steps
    )
    _check_state(system, y0)
    _stiff.check_diag(ROOT_FINDERS[root_finder], system)
    operators.check_finite(y0, "y0")
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
