"""Implicit solvers for stiff ODEs in PyTorch (the JAX ``stiff`` module has the same API):
backward Euler and variable-step BDF2, fixed step or adaptive, with a root finder from
``ROOT_FINDERS`` for the stage ``F(y) = y - c f(t, y) - r = 0`` (``c = h*beta``):
``fixed_point`` (y <- r + c f(y)), ``jacobi_newton`` (y <- y - F(y) / (1 - c D_dim f(y))) or
``newton`` (y <- y - (I - c J(y))^{-1} F(y), dense J and its LU).

>>> sol = solve(ProblemSystem(robertson(40.0)), y0, (0.0, 40.0), root_finder="jacobi_newton")
>>> sol.ys[-1], summarize(sol.stats)   # (batch, 3) at t = 40; iterations, NFE, failures
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch.func import jacrev, vmap

from impls import _stiff
from impls._stiff import RootResult, Solution
from impls._stiff import summarize as summarize  # the public name of both backends
from impls.stiff_problems import HollowProblem, Problem
from impls.torch_backend import operators

Tensor = torch.Tensor


class System:
    """A vector field ``rhs(t, y)`` on (batch, dim) states, with its Jacobian diagonal
    ``diag(t, y)`` = D_dim f, (batch, dim) (None: no jacobi_newton). The dense Jacobian is
    ``vmap(jacrev)``: torch's forward mode costs 3-6x more per op on small systems."""

    def __init__(
        self,
        rhs: Callable[[float, Tensor], Tensor],
        dim: int,
        diag: Callable[[float, Tensor], Tensor] | None = None,
        name: str = "custom",
    ):
        self._rhs, self._diag, self.dim, self.name = rhs, diag, dim, name

    def rhs(self, t: float, y: Tensor) -> Tensor:
        return self._rhs(t, y)

    def diag(self, t: float, y: Tensor) -> Tensor:
        if self._diag is None:
            raise ValueError(f"system {self.name!r} has no Jacobian diagonal: pass diag=...")
        return self._diag(t, y)

    @property
    def has_diag(self) -> bool:
        return self._diag is not None

    def jacobian(self, t: float, y: Tensor) -> Tensor:
        """Per-sample Jacobians, (batch, dim, dim)."""
        return vmap(jacrev(lambda row: self.rhs(t, row[None])[0]))(y)


class ProblemSystem(System):
    """A classic problem of :mod:`impls.stiff_problems`, with its analytic diagonal."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(
            lambda t, y: problem.rhs(t, y, torch),
            problem.dim,
            lambda t, y: problem.diag(t, y, torch),
            problem.name,
        )


class HollowSystem(System):
    """``f(x) = -diag(lambdas) x + g(x)`` with g a HollowNet; ``D_dim f = -lambdas + D_dim g``
    through the hollow operator (one pass), whatever the dimension."""

    def __init__(self, net: torch.nn.Module, lambdas: Tensor | np.ndarray):
        param = next(iter(net.parameters()))
        self.net = net
        self.lambdas = torch.as_tensor(lambdas, dtype=param.dtype, device=param.device)
        super().__init__(
            lambda t, y: net(y) - self.lambdas * y,
            net.spec.dim,
            lambda t, y: operators.ddim(net, y, method="hollow") - self.lambdas,
            "hollow",
        )

    @classmethod
    def from_problem(cls, problem: HollowProblem, device: str = "cpu") -> HollowSystem:
        from impls.torch_backend.models import build

        return cls(build(problem.spec, problem.seed, device), problem.lambdas)


def _wrms(x: Tensor) -> float:
    """The largest per-sample root-mean-square: samples share steps but none is diluted."""
    return float(x.square().mean(-1).sqrt().max())


# --- root finders: the update a residual F gives, and the evaluations counted. Immutable, as
# in JAX: every method returns the new finder. --------------------------------------------------


@dataclass(frozen=True)
class FixedPoint:
    """y <- r + c f(y): the update is the residual itself (no derivative)."""

    name: ClassVar[str] = "fixed_point"
    needs_diag: ClassVar[bool] = False
    c: float = math.nan  # the c the linearisation was made (factored) for
    stale: bool = True  # re-evaluate before the next use ("always" reuse)
    n_jac: int = 0
    n_diag: int = 0
    n_lu: int = 0

    @classmethod
    def start(cls, y: Tensor) -> FixedPoint:
        return cls()

    def update(self, system: System, t: float, y: Tensor, c: float) -> FixedPoint:
        """Re-evaluate the linearisation at (t, y)."""
        return replace(self, c=c, stale=False)

    def refactor(self, c: float) -> FixedPoint:
        """Reuse the linearisation for a new c."""
        return replace(self, c=c)

    def direction(self, residual: Tensor) -> Tensor:
        return residual


@dataclass(frozen=True)
class JacobiNewton(FixedPoint):
    """y <- y - F(y) / (1 - c D_dim f(y)): the Jacobian diagonal."""

    name: ClassVar[str] = "jacobi_newton"
    needs_diag: ClassVar[bool] = True
    d: Tensor | None = None

    def update(self, system, t, y, c):
        return replace(self, c=c, stale=False, d=system.diag(t, y), n_diag=self.n_diag + 1)

    def direction(self, residual):
        return residual / (1 - self.c * self.d)


@dataclass(frozen=True)
class Newton(FixedPoint):
    """y <- y - (I - c J(y))^{-1} F(y): the dense Jacobian and its LU."""

    name: ClassVar[str] = "newton"
    jac: Tensor | None = None
    lu: Tensor | None = None
    piv: Tensor | None = None

    def update(self, system, t, y, c):
        jac = system.jacobian(t, y)
        return replace(self, stale=False, jac=jac, n_jac=self.n_jac + 1)._factor(c)

    def refactor(self, c):
        return self._factor(c) if c != self.c else self

    def _factor(self, c: float) -> Newton:
        eye = torch.eye(self.jac.shape[-1], dtype=self.jac.dtype, device=self.jac.device)
        lu, piv = torch.linalg.lu_factor(eye - c * self.jac)
        return replace(self, c=c, lu=lu, piv=piv, n_lu=self.n_lu + 1)

    def direction(self, residual):
        return torch.linalg.lu_solve(self.lu, self.piv, residual[..., None])[..., 0]


ROOT_FINDERS = {finder.name: finder for finder in (FixedPoint, Newton, JacobiNewton)}


@torch.no_grad()
def find_root(
    system: System,
    t: float,
    rhs: Tensor,
    c: float,
    y_guess: Tensor,
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
    finder = ROOT_FINDERS[opts.root_finder]
    _stiff.check_diag(finder, system)
    tol, cfg = opts.tol(), opts.config()
    y, ok, iters, finder = _stiff.iterate(
        system, float(t), rhs, float(c), y_guess, cfg, tol, finder.start(y_guess), _OPS
    )
    return RootResult(y, ok, iters, iters, finder.n_jac, finder.n_diag, finder.n_lu)


def _check_state(system: System, y: Tensor) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"states must be torch.Tensors, got {type(y).__name__}")
    _stiff.check_state(tuple(y.shape), str(y.dtype).removeprefix("torch."), system.dim)


def _weights(tol: _stiff.Tol, *ys: Tensor) -> Tensor:
    big = ys[0].abs() if len(ys) == 1 else torch.maximum(ys[0].abs(), ys[1].abs())
    return tol.atol + tol.rtol * big


def _while_loop(running, body, carry):
    while running(carry):
        carry = body(carry)
    return carry


def _record(ys: Tensor, i: int, landed: bool, y: Tensor) -> Tensor:
    if landed:
        ys[i] = y
    return ys


_OPS = _stiff.Ops(
    where=lambda cond, a, b: a if cond else b,
    cond=lambda pred, a, b: a() if pred else b(),
    while_loop=_while_loop,
    array=lambda value, dtype=None: value,
    maximum=max,
    minimum=min,
    logical_not=operator.not_,
    isfinite=math.isfinite,
    sqrt=lambda x: x**0.5,
    zeros_like=torch.zeros_like,
    wrms=_wrms,
    weights=_weights,
    record=_record,
)


@torch.no_grad()
def solve(
    system: System,
    y0: Tensor,
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
    """Integrate ``y' = system.rhs(t, y)`` from ``y0`` (batch, dim) at ``ts[0]`` through the
    output times ``ts``: ys (len(ts), batch, dim), ``ys[0] = y0``; the keywords as
    :class:`impls._stiff.Options` checks them. The batch's samples share the step sequence;
    norms take the worst sample.
    """
    opts = _stiff.Options(  # in the signature's order, which is the fields'
        root_finder, reuse, rtol, atol, root_tol, max_iters, stepper, step_size, max_steps
    )
    times, h, cfg = _stiff.configure(ts, opts)
    _check_state(system, y0)
    _stiff.check_diag(ROOT_FINDERS[opts.root_finder], system)
    operators.check_finite(y0, "y0")
    ys = torch.full((len(times), *y0.shape), math.nan, dtype=y0.dtype, device=y0.device)
    ys[0] = y0
    finder = ROOT_FINDERS[opts.root_finder].start(y0)
    ys, stats = _stiff.integrate(system, y0, times, ys, cfg, opts.tol(), h, finder, _OPS)
    return Solution(torch.tensor(times, dtype=y0.dtype, device=y0.device), ys, stats)
