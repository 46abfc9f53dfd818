"""The implicit solvers, framework-free, over the scalar operations and loops a backend
passes as :class:`Ops`: argument checks, configuration, the variable-step BDF1/BDF2
coefficients, the root iteration and the step loop.

BDF uses divided differences of the accepted solution, ``d1 = [y_n, y_{n-1}]``, ``d2 = [y_n,
y_{n-1}, y_{n-2}]``, and steps ``h1 = t_n - t_{n-1}``, ``h2 = t_{n-1} - t_{n-2}``. At the
start ``d1 = f(t0, y0)``, ``d2 = 0``, ``h1 = h2 = 0`` (confluent points): the first predictor
is explicit Euler, the second a Hermite quadratic.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

STEPPERS = ("backward_euler", "bdf2")
ROOT_FINDERS = ("fixed_point", "newton", "jacobi_newton")
# When newton / jacobi_newton re-evaluate their Jacobian (diagonal): every iteration, once per
# step attempt (at the predictor), or only after the iteration failed ("always" reuse).
REUSE = ("never", "step", "always")

SAFETY = 0.9
FAC_MIN = 0.2
# Variable-step BDF2 is zero-stable for step ratios below 1 + sqrt(2): grow by at most 2.
FAC_MAX = {"backward_euler": 5.0, "bdf2": 2.0}
FAIL_FACTOR = 0.25  # step shrink after the root finder failed to converge
STRETCH = 1e-6  # a step within this fraction of an output time lands on it exactly

# The root finder counts its own evaluations (FINDER_STATS); the run counts the rest.
FINDER_STATS = ("n_jac", "n_diag", "n_lu")
RUN_STATS = ("n_steps", "n_accepted", "n_rejected", "n_failed", "n_iters", "nfe")
STATS = (*RUN_STATS, *FINDER_STATS)


@dataclass(frozen=True)
class Config:
    """The static part of a solve (in JAX, changing it recompiles)."""

    stepper: str
    root_finder: str
    reuse: str
    max_iters: int
    max_steps: int = 1
    adaptive: bool = True


@dataclass(frozen=True)
class RootOptions:
    """``find_root``'s keywords: the root finder (``ROOT_FINDERS``) and its Jacobian ``reuse``
    (``REUSE``); converged when the remaining error, weighted by atol + rtol |y|, is below
    ``root_tol``; failed after ``max_iters`` iterations."""

    root_finder: str = "jacobi_newton"
    reuse: str = "never"
    rtol: float = 1e-6
    atol: float = 1e-9
    root_tol: float = 1e-2
    max_iters: int = 20

    def __post_init__(self):
        check_method(getattr(self, "stepper", STEPPERS[0]), self.root_finder, self.reuse)
        check_tolerances(self.rtol, self.atol, self.root_tol, self.max_iters)

    def tol(self, array: Callable[[Any], Any] = lambda v: v) -> Tol:
        """rtol, atol and root_tol as the backend's ``array`` makes them."""
        return Tol(array(self.rtol), array(self.atol), array(self.root_tol))

    def config(self, max_steps: int = 1, adaptive: bool = True) -> Config:
        stepper = getattr(self, "stepper", STEPPERS[0])
        return Config(stepper, self.root_finder, self.reuse, self.max_iters, max_steps, adaptive)


@dataclass(frozen=True)
class Options(RootOptions):
    """``solve``'s keywords: find_root's, the ``stepper`` (``STEPPERS``), ``step_size`` (None:
    adaptive, rtol/atol on Milne's local error estimate; h: fixed steps, each output time
    landed on exactly, a step whose root finder fails kept and counted) and ``max_steps``."""

    stepper: str = "bdf2"
    step_size: float | None = None
    max_steps: int = 10_000

    def __post_init__(self):
        super().__post_init__()
        _count(self.max_steps, "max_steps")


class Tol(NamedTuple):
    """The weights of the norms and the root finder's threshold (traced in JAX)."""

    rtol: Any
    atol: Any
    root_tol: Any


def bump(counts: dict[str, Any], **by: Any) -> dict[str, Any]:
    """The run's counters plus ``by`` (Python ints in PyTorch, int32 scalars in JAX)."""
    return counts | {key: counts[key] + value for key, value in by.items()}


def bdf_step(h, h1, h2, second) -> tuple[Any, Any, Any, Any]:
    """Coefficients of one variable-step BDF step of size ``h``, as (beta, gamma, p2, ratio);
    ``second`` is 1 for BDF2 and 0 for BDF1, blended by arithmetic (Python floats and traced
    JAX scalars alike). Nothing divides by h1 or h2, which are 0 at the start:

        y = y_n + h*gamma*d1 + h*beta*f(y)                  (the implicit stage)
        predictor = y_n + h*d1 + p2*d2                      (the root finder's first guess)
        local error ~= ratio * (y - predictor)              (Milne's device)

    ``ratio = C / (C_pred - C)`` from the error constants of corrector and predictor: -1/2 for
    a first explicit-Euler predicted BE step, -2/11 for constant-step BDF2.
    """
    beta2 = (h + h1) / (h1 + 2 * h)
    gamma2 = h / (h1 + 2 * h)
    ratio1 = -h / (2 * h + h1)
    ratio2 = -h * (h + h1) / ((h + h1 + h2) * (h1 + 2 * h) + h * (h + h1))
    beta = second * beta2 + (1 - second)
    gamma = second * gamma2
    p2 = second * h * (h + h1)
    ratio = second * ratio2 + (1 - second) * ratio1
    return beta, gamma, p2, ratio


class Solution(NamedTuple):
    """``ys[i]`` (batch, dim) at ``ts[i]`` (NaN past a stop at max_steps); ``stats``: the
    counters of ``STATS`` plus ``success`` (all output times reached) and ``t_final``."""

    ts: Any
    ys: Any
    stats: dict


class RootResult(NamedTuple):
    y: Any
    converged: Any
    n_iters: Any
    nfe: Any
    n_jac: Any
    n_diag: Any
    n_lu: Any


class State(NamedTuple):
    """A solve between two step attempts: scalars are Python floats in PyTorch (the step
    control runs on the host), 0-d arrays in JAX (traced)."""

    t: Any
    y: Any  # (batch, dim)
    d1: Any
    d2: Any
    h1: Any
    h2: Any
    h: Any  # the proposed next step
    accepted: Any  # whether the last attempt was (else the next step may not grow)
    finder: Any
    counts: dict


class Ops(NamedTuple):
    """What the solver needs from a backend: Python's scalars and loops in PyTorch (the control
    runs on the host), jax.numpy's and lax's in JAX (traced)."""

    where: Callable  # (cond, a, b): both evaluated
    cond: Callable  # (pred, a(), b()): one called
    while_loop: Callable  # (running, body, carry)
    array: Callable  # (value, dtype=None): a loop's initial scalar
    maximum: Callable
    minimum: Callable
    logical_not: Callable
    isfinite: Callable
    sqrt: Callable
    zeros_like: Callable
    wrms: Callable  # (batch, dim) -> the largest per-sample root-mean-square
    weights: Callable  # (tol, *ys) -> atol + rtol * max |y|, (batch, dim)
    record: Callable  # (ys, i, landed, y) -> ys with ys[i] = y where landed


_RUNNING, _CONVERGED, _FAILED = 0, 1, 2


def iterate(system, t, rhs, c, y, cfg: Config, tol: Tol, finder, ops: Ops):
    """Solve y - c f(t, y) = rhs from the guess y: (y, converged, iterations = f evaluations,
    finder). Converged when an update is 0, or when the remaining error theta/(1-theta) * |dy|
    is below root_tol, from the second iteration (theta, the contraction rate, needs two);
    failed when an update is not finite, theta reaches 1, or max_iters run out.
    """
    if cfg.reuse == "step":
        finder = finder.update(system, t, y, c)
    elif cfg.reuse == "always":
        finder = ops.cond(
            finder.stale, lambda: finder.update(system, t, y, c), lambda: finder.refactor(c)
        )

    def body(carry):
        k, y, previous, _, finder = carry
        if cfg.reuse == "never":
            finder = finder.update(system, t, y, c)
        delta = finder.direction(y - c * system.rhs(t, y) - rhs)
        y = y - delta
        size = ops.wrms(delta / (tol.atol + tol.rtol * abs(y)))
        theta = size / previous  # 0 at the first iteration: previous is inf
        failed = ops.logical_not(ops.isfinite(size)) | (theta >= 1)
        # The floor only keeps Python floats from dividing by 0 where theta >= 1 (failed wins).
        remaining = size * theta / ops.maximum(1 - theta, 1e-300)
        converged = (size == 0) | ((k > 0) & (remaining <= tol.root_tol))
        status = ops.where(failed, _FAILED, ops.where(converged, _CONVERGED, _RUNNING))
        return k + 1, y, size, status, finder

    def running(carry):
        return (carry[3] == _RUNNING) & (carry[0] < cfg.max_iters)

    start = (ops.array(0, "int32"), y, ops.array(math.inf, y.dtype), ops.array(_RUNNING), finder)
    k, y, _, status, finder = ops.while_loop(running, body, start)
    return y, status == _CONVERGED, k, finder


def initial_step(system, t, y, f0, span, tol: Tol, ops: Ops):
    """Hairer & Wanner's starting step for order 1 (one extra f evaluation)."""
    scale = ops.weights(tol, y)
    d0, d1 = ops.wrms(y / scale), ops.wrms(f0 / scale)
    # The floors keep Python floats from dividing by 0 in the branch where() drops.
    h0 = ops.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / ops.maximum(d1, 1e-300))
    h0 = ops.minimum(h0, span)
    d2 = ops.wrms((system.rhs(t + h0, y + h0 * f0) - f0) / scale) / h0
    big = ops.maximum(d1, d2)
    h1 = ops.where(
        big <= 1e-15, ops.maximum(1e-6, h0 * 1e-3), ops.sqrt(0.01 / ops.maximum(big, 1e-300))
    )
    return ops.minimum(ops.minimum(100 * h0, h1), span)


def integrate(system, y0, ts, ys, cfg: Config, tol: Tol, step_size, finder, ops: Ops):
    """From ``y0`` (batch, dim) at ``ts[0]`` through the output times ``ts``, with ``finder``
    started: (``ys`` (len(ts), batch, dim) holding the states reached, the stats)."""
    counts = bump({key: ops.array(0, "int32") for key in RUN_STATS}, nfe=1)
    f0 = system.rhs(ts[0], y0)
    h = step_size
    if cfg.adaptive:
        h = initial_step(system, ts[0], y0, f0, ts[-1] - ts[0], tol, ops)
        counts = bump(counts, nfe=1)
    zero, accepted = ops.array(0.0, y0.dtype), ops.array(True)
    s = State(ts[0], y0, f0, ops.zeros_like(y0), zero, zero, h, accepted, finder, counts)
    s, reached, ys = run(system, s, ts, ys, cfg, tol, step_size, ops)
    return ys, stats(s, reached == len(ts))


def run(system, s: State, ts, ys, cfg: Config, tol: Tol, step_size, ops: Ops):
    """Step attempts from ``s`` until the last output time of ``ts`` is reached or max_steps are
    spent: (the state, the number of output times reached, ``ys`` with their states)."""

    def body(carry):
        s, i, ys = carry
        new, landed = step(system, s, ts[i], cfg, tol, step_size, ops)
        return new, i + landed, ops.record(ys, i, landed, new.y)

    def running(carry):
        s, i, _ = carry
        return (i < len(ts)) & (s.counts["n_steps"] < cfg.max_steps)

    return ops.while_loop(running, body, (s, ops.array(1, "int32"), ys))


def step(system, s: State, target, cfg: Config, tol: Tol, step_size, ops: Ops):
    """One attempt from ``s`` towards the output time ``target``: (the new state, whether it
    landed on ``target``). Adaptive: Milne's error estimate and an integral controller; a step
    whose root finder fails is retried 4x smaller. Fixed: every step is kept."""
    landing = target - s.t <= s.h * (1 + STRETCH)
    h = ops.where(landing, target - s.t, s.h)
    second = ops.where(s.counts["n_accepted"] > 0, 1.0, 0.0) if cfg.stepper == "bdf2" else 0.0
    beta, gamma, p2, ratio = bdf_step(h, s.h1, s.h2, second)
    guess = s.y + h * s.d1 + p2 * s.d2
    rhs = s.y + (h * gamma) * s.d1
    y, ok, iters, finder = iterate(system, s.t + h, rhs, h * beta, guess, cfg, tol, s.finder, ops)
    failed = ops.logical_not(ok)
    counts = bump(s.counts, n_steps=1, n_iters=iters, nfe=iters, n_failed=failed)
    finder = replace(finder, stale=finder.stale | failed)
    if cfg.adaptive:
        error = ops.wrms(ratio * (y - guess) / ops.weights(tol, s.y, y))
        factor = SAFETY * ops.maximum(error, 1e-10) ** (-1 / (2 + second))
        accept = ok & (error <= 1)
        counts = bump(counts, n_rejected=ok & (error > 1))
        shrink = ops.where(ok, ops.maximum(FAC_MIN, factor), FAIL_FACTOR)
        grow = ops.where(s.accepted, FAC_MAX[cfg.stepper], 1.0)
        h_next = h * ops.where(accept, ops.minimum(grow, ops.maximum(FAC_MIN, factor)), shrink)
    else:
        accept, h_next = True, step_size
    d1 = (y - s.y) / h

    def keep(new, old):
        return ops.where(accept, new, old)

    new = State(
        t=keep(ops.where(landing, target, s.t + h), s.t),
        y=keep(y, s.y),
        d1=keep(d1, s.d1),
        d2=keep((d1 - s.d1) / (h + s.h1), s.d2),
        h1=keep(h, s.h1),
        h2=keep(s.h1, s.h2),
        h=h_next,
        accepted=accept if cfg.adaptive else s.accepted,
        finder=finder,
        counts=bump(counts, n_accepted=accept),
    )
    return new, accept & landing


def stats(s: State, success: Any) -> dict[str, Any]:
    """The run's and the root finder's counters, ``success`` and ``t_final``."""
    finder = {key: getattr(s.finder, key) for key in FINDER_STATS}
    return {**s.counts, **finder, "success": success, "t_final": s.t}


# --- argument checks: both backends raise the same words -------------------------------------


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_method(stepper: str, root_finder: str, reuse: str) -> None:
    if stepper not in STEPPERS:
        raise ValueError(f"unknown stepper {stepper!r}; available: {', '.join(STEPPERS)}")
    if root_finder not in ROOT_FINDERS:
        raise ValueError(
            f"unknown root finder {root_finder!r}; available: {', '.join(ROOT_FINDERS)}"
        )
    if reuse not in REUSE:
        raise ValueError(f"unknown reuse {reuse!r}; available: {', '.join(REUSE)}")
    if root_finder == "fixed_point" and reuse != "never":
        raise ValueError("reuse applies to newton and jacobi_newton; fixed_point has no Jacobian")


def check_tolerances(rtol: Any, atol: Any, root_tol: Any, max_iters: Any) -> None:
    rtol, atol, root_tol = (
        _number(v, n) for v, n in ((rtol, "rtol"), (atol, "atol"), (root_tol, "root_tol"))
    )
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    if not atol > 0:
        raise ValueError(
            f"atol must be > 0 (a zero component would have zero weight), got {atol!r}"
        )
    if not root_tol > 0:
        raise ValueError(f"root_tol must be > 0, got {root_tol!r}")
    _count(max_iters, "max_iters")


def configure(ts: Any, options: Options) -> tuple[tuple[float, ...], float | None, Config]:
    """Check a solve's times and step: (output times, fixed step size or None, configuration)."""
    times = check_times(ts)
    h = check_step_size(options.step_size, times)
    return times, h, options.config(options.max_steps, h is None)


def check_diag(finder: Any, system: Any) -> None:
    """A root finder that iterates with D_dim f needs a system that provides it."""
    if finder.needs_diag and not system.has_diag:
        raise ValueError(
            f"{finder.name} needs a Jacobian diagonal; system {system.name!r} has none"
        )


def check_times(ts: Any) -> tuple[float, ...]:
    """Output times: a strictly increasing sequence of >= 2 finite numbers, ts[0] the start."""
    if not isinstance(ts, Sequence) or isinstance(ts, str):
        try:
            ts = [float(t) for t in ts]
        except TypeError:
            raise TypeError(f"ts must be a sequence of times, got {type(ts).__name__}") from None
    times = tuple(_number(t, "every time in ts") for t in ts)
    if len(times) < 2:
        raise ValueError(f"ts must hold the start time and at least one output time, got {times}")
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError(f"ts must be strictly increasing, got {times}")
    return times


def check_step_size(step_size: Any, ts: tuple[float, ...]) -> float | None:
    if step_size is None:
        return None
    h = _number(step_size, "step_size")
    if not 0 < h <= ts[-1] - ts[0]:
        raise ValueError(f"step_size must be in (0, t1 - t0 = {ts[-1] - ts[0]:g}], got {h!r}")
    return h


def check_state(
    shape: tuple, dtype: str, dim: int, name: str = "y0", owner: str = "system", row: str = "state"
) -> None:
    """``name`` must be a floating (batch, dim) array (SDE's words: "x", "target", "sample")."""
    if len(shape) != 2 or shape[1] != dim:
        raise ValueError(
            f"{name} must have shape (batch, {dim}) for this {owner}, got {tuple(shape)}"
        )
    if shape[0] < 1:
        raise ValueError(f"{name} must hold at least one {row}, got shape {tuple(shape)}")
    if dtype not in ("float32", "float64"):
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """Plain-Python statistics (ints, floats, bool) with ``iters_per_step`` added; a counter
    the solver does not keep (diffrax keeps only its step counts) is None."""
    out: dict[str, Any] = {
        key: None if stats.get(key) is None else int(stats[key]) for key in STATS
    }
    out["success"] = bool(stats["success"])
    out["t_final"] = float(stats["t_final"])
    iters = out["n_iters"]
    out["iters_per_step"] = None if iters is None else iters / max(out["n_steps"], 1)
    return out
