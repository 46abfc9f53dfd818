"""Fokker-Planck matching, framework-free: targets with closed-form marginals, the residual,
the fields' container and the checks both backends share. An Itô SDE with diagonal noise,
``dx = f dt + diag(g) dW``, moves ``s = log p`` by (``G = g^2``, elementwise)

    d_t s = sum_i [ -d_i f_i - f_i d_i s + 1/2 d_i^2 G_i + d_i G_i d_i s
                    + 1/2 G_i (d_i^2 s + (d_i s)^2) ],

where only dimension-wise derivatives appear, which a HollowNet gives in a few passes. Closed
forms take an array namespace ``xp`` (numpy, torch or jax.numpy), ``t`` (batch,), ``x`` (batch, d).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

ROUTES = ("hollow", "dense")
# The derivative orders the residual takes of each field: D_dim f, and D_dim g, D_dim^2 g.
DRIFT_ORDER, DIFFUSION_ORDER = 1, 2
# route -> the operator method its derivatives come from (the benchmarks' ``method``).
ROUTE_METHODS = {"hollow": "hollow", "dense": "dense_vectorized"}

Array = Any
Field = Callable[[Array, Array], Array]  # (t (batch,), x (batch, d)) -> (batch, d)


def residual(dt_logp, score, hess_diag, f, df, g, dg, d2g) -> Array:
    """The Fokker-Planck residual ``d_t log p - rhs``, (batch,), from the target's terms
    (``dt_logp`` (batch,); ``score``, ``hess_diag`` (batch, d)) and the fields' values and
    dimension-wise derivatives (``f, df = D_dim f, g, dg = D_dim g, d2g = D_dim^2 g``, each
    (batch, d)), in any array type."""
    g2 = g * g
    dg2 = 2 * g * dg
    d2g2 = 2 * (dg * dg + g * d2g)
    rhs = -df - f * score + 0.5 * d2g2 + dg2 * score + 0.5 * g2 * (hess_diag + score * score)
    return dt_logp - rhs.sum(-1)


@dataclass(frozen=True, eq=False)
class DimwiseField:
    """A vector field ``fn(t, x)`` with explicit dimension-wise derivatives for the hollow
    route: ``ddim[k-1](t, x)`` is ``D_dim^k fn``. Each maps t (batch,), x (batch, dim) to
    (batch, dim)."""

    fn: Field
    ddim: tuple[Field, ...]
    dim: int

    def __post_init__(self):
        if not callable(self.fn) or not all(callable(d) for d in self.ddim):
            raise TypeError("DimwiseField needs a callable fn and a tuple of callables ddim")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")

    def __call__(self, t: Array, x: Array) -> Array:
        return self.fn(t, x)


def _const(value: np.ndarray, like: Array, xp) -> Array:
    """``value`` in ``like``'s namespace, dtype and device (torch needs the device named)."""
    if xp.__name__ == "torch":
        return xp.as_tensor(value, dtype=like.dtype, device=like.device)
    return xp.asarray(value, dtype=like.dtype)


def _vector(value: Any, dim: int, name: str, positive: bool = False) -> np.ndarray:
    """A scalar or (dim,) parameter as a finite float64 (dim,) array."""
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (dim,)).copy()
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not (arr > 0).all():
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return arr


def _span(t_span: Any) -> tuple[float, float]:
    t0, t1 = (float(v) for v in t_span)
    if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
        raise ValueError(f"t_span must be two finite times t0 < t1, got {t_span!r}")
    return t0, t1


@dataclass(frozen=True, eq=False)
class OUMixture:
    """Marginals of ``dX = -theta (X - mu) dt + sigma dW`` (per dimension) started at
    ``t_span[0]`` from ``sum_k weights[k] N(means0[k], diag(stds0[k]^2))``: with
    ``a = exp(-theta (t - t0))`` each component stays a diagonal Gaussian, mean
    ``mu + (m0 - mu) a``, variance ``s0^2 a^2 + sigma^2 (1 - a^2) / (2 theta)``.
    ``theta, mu, sigma`` (dim,), ``weights`` (K,), ``means0, stds0`` (K, dim).
    """

    theta: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    weights: np.ndarray
    means0: np.ndarray
    stds0: np.ndarray
    t_span: tuple[float, float] = (0.0, 1.0)
    name: str = "ou"

    @property
    def dim(self) -> int:
        return self.theta.shape[0]

    def _components(self, t: Array, xp, like: Array) -> tuple[Array, Array, Array, Array]:
        """Each component's mean, variance and their time derivatives, (batch, K, dim)."""
        theta, mu, sigma = (_const(p, like, xp) for p in (self.theta, self.mu, self.sigma))
        m0, s0 = _const(self.means0, like, xp), _const(self.stds0, like, xp)
        elapsed = (t - self.t_span[0])[:, None, None]
        a2 = xp.exp(-2 * theta * elapsed)
        m = mu + (m0 - mu) * xp.exp(-theta * elapsed)
        v = s0 * s0 * a2 - sigma * sigma / (2 * theta) * xp.expm1(-2 * theta * elapsed)
        return m, v, -theta * (m - mu), -2 * theta * v + sigma * sigma

    def log_prob(self, t: Array, x: Array, xp) -> Array:
        """log p(t, x), (batch,)."""
        m, v, _, _ = self._components(t, xp, x)
        return _logsumexp(self._log_joint(x, m, v, xp), xp)

    def _log_joint(self, x: Array, m: Array, v: Array, xp) -> Array:
        """log w_k + log N_k(x), (batch, K)."""
        z = x[:, None, :] - m
        log_n = -0.5 * (xp.log(2 * math.pi * v) + z * z / v).sum(-1)
        return xp.log(_const(self.weights, x, xp)) + log_n

    def terms(self, t: Array, x: Array, xp) -> tuple[Array, Array, Array]:
        """(d_t log p (batch,), grad log p (batch, d), diag of its Hessian (batch, d)): the
        components' Gaussian terms weighted by their responsibilities."""
        m, v, dm, dv = self._components(t, xp, x)
        joint = self._log_joint(x, m, v, xp)
        resp = xp.exp(joint - _logsumexp(joint, xp)[:, None])[..., None]  # (batch, K, 1)
        z = x[:, None, :] - m
        score_k = -z / v
        dt_k = (-0.5 * dv / v + z * dm / v + 0.5 * z * z * dv / (v * v)).sum(-1)
        score = (resp * score_k).sum(1)
        hess = (resp * (score_k * score_k - 1 / v)).sum(1) - score * score
        return (resp[..., 0] * dt_k).sum(-1), score, hess

    def fields(self, xp) -> tuple[DimwiseField, DimwiseField]:
        """The true drift ``-theta (x - mu)`` and diffusion ``sigma`` in namespace ``xp``."""

        def drift(t, x):
            return -_const(self.theta, x, xp) * (x - _const(self.mu, x, xp))

        def diffusion(t, x):
            return 0 * x + _const(self.sigma, x, xp)

        def constant(value):
            return lambda t, x: 0 * x + _const(value, x, xp)

        zero = np.zeros(self.dim)
        return (
            DimwiseField(drift, (constant(-self.theta),), self.dim),
            DimwiseField(diffusion, (constant(zero), constant(zero)), self.dim),
        )

    def _numpy_components(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        m, v, _, _ = self._components(np.array([float(t)]), np, np.zeros(1))
        return m[0], v[0]

    def mean(self, t: float) -> np.ndarray:
        """E[X_t], (dim,)."""
        m, _ = self._numpy_components(t)
        return self.weights @ m

    def variance(self, t: float) -> np.ndarray:
        """Var[X_t] per dimension, (dim,)."""
        m, v = self._numpy_components(t)
        return self.weights @ (v + m * m) - self.mean(t) ** 2

    def sample(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw of X_t for each time in ``t`` (n,): (n, dim), float64."""
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        m, v, _, _ = self._components(t, np, np.zeros(1))
        k = rng.choice(len(self.weights), size=t.shape[0], p=self.weights)
        rows = np.arange(t.shape[0])
        return m[rows, k] + np.sqrt(v[rows, k]) * rng.standard_normal((t.shape[0], self.dim))


def _logsumexp(a: Array, xp) -> Array:
    """log sum_k exp(a[..., k]), stable."""
    top = xp.amax(a, -1)
    return top + xp.log(xp.exp(a - top[..., None]).sum(-1))


def ou_mixture(
    dim: int,
    weights: Any = (0.3, 0.7),
    means0: Any = None,
    stds0: Any = 0.4,
    theta: Any = 1.0,
    mu: Any = 0.0,
    sigma: Any = 1.0,
    t_span: tuple[float, float] = (0.0, 1.0),
) -> OUMixture:
    """An OU process from a Gaussian mixture: ``weights`` (K,) positive, summing to 1;
    ``means0`` (K, dim) or (K,) (default: spread over [-1.5, 1.5]); ``stds0`` scalar, (K,) or
    (K, dim); ``theta, sigma > 0`` and ``mu`` scalar or (dim,)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size < 1 or not (w > 0).all() or not math.isclose(w.sum(), 1.0, rel_tol=1e-9):
        raise ValueError(f"weights must be positive and sum to 1, got {weights!r}")
    n = w.size
    if means0 is None:
        means0 = np.linspace(-1.5, 1.5, n) if n > 1 else np.zeros(1)
    return OUMixture(
        theta=_vector(theta, dim, "theta", positive=True),
        mu=_vector(mu, dim, "mu"),
        sigma=_vector(sigma, dim, "sigma", positive=True),
        weights=w,
        means0=_per_component(means0, n, dim, "means0"),
        stds0=_per_component(stds0, n, dim, "stds0", positive=True),
        t_span=_span(t_span),
        name="ou" if n == 1 else "ou_mixture",
    )


def _per_component(value: Any, n: int, dim: int, name: str, positive=False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == n and n != dim:
        arr = arr[:, None]
    try:
        arr = np.broadcast_to(arr, (n, dim)).copy()
    except ValueError:
        raise ValueError(f"{name} must broadcast to ({n}, {dim}), got shape {arr.shape}") from None
    if not np.isfinite(arr).all() or (positive and not (arr > 0).all()):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {value!r}")
    return arr


def ou_process(dim: int, *, mean0: Any = 1.0, std0: Any = 0.5, **ou: Any) -> OUMixture:
    """The OU process from ``N(mean0, diag(std0^2))``, mean0 and std0 scalars or (dim,);
    ``ou``: :func:`ou_mixture`'s theta, mu, sigma and t_span."""
    mean0 = _vector(mean0, dim, "mean0")[None]
    return ou_mixture(dim, (1.0,), mean0, _vector(std0, dim, "std0", positive=True)[None], **ou)


Sampler = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True, eq=False)
class UserTarget:
    """A target ``log_prob(t (batch,), x (batch, dim)) -> (batch,)`` in the backend's arrays,
    rows independent (the backends differentiate it). ``sampler(t (n,), rng) -> (n, dim)``
    draws numpy training points (x ~ p_t or any proposal), else pass one to ``fit``."""

    dim: int
    log_prob: Callable[[Array, Array], Array]
    t_span: tuple[float, float] = (0.0, 1.0)
    sampler: Sampler | None = None
    name: str = "user"

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int, got {self.dim!r}")
        if not callable(self.log_prob):
            raise TypeError("log_prob must be a callable log_prob(t, x) -> (batch,)")
        object.__setattr__(self, "t_span", _span(self.t_span))

    def sample(self, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.sampler is None:
            raise ValueError(f"target {self.name!r} has no sampler: pass sampler=... to fit")
        return np.asarray(self.sampler(t, rng), dtype=np.float64)


Target = OUMixture | UserTarget


def training_batch(
    target: Target, n: int, rng: np.random.Generator, sampler: Sampler | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(t (n,) uniform over the target's t_span, x (n, dim) from ``sampler`` or the target)."""
    t = rng.uniform(*target.t_span, size=n)
    x = np.asarray((sampler or target.sample)(t, rng), dtype=np.float64)
    if x.shape != (n, target.dim):
        raise ValueError(f"the sampler must return shape ({n}, {target.dim}), got {x.shape}")
    return t, x


@dataclass(frozen=True)
class FitOptions:
    """``fit``'s keywords: ``steps`` of Adam at ``lr``, each on ``batch`` fresh points (t
    uniform over the target's t_span, x from ``sampler``, default the target, drawn from
    ``seed``), the residual on ``route``."""

    steps: int = 500
    batch: int = 256
    lr: float = 1e-2
    route: str = "hollow"
    seed: int = 0
    sampler: Sampler | None = None

    def __post_init__(self):
        for value, name in ((self.steps, "steps"), (self.batch, "batch")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a positive number, got {lr!r}")

    def batches(self, target: Target) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Each step's (t (batch,), x (batch, dim))."""
        rng = np.random.default_rng(self.seed)
        for _ in range(self.steps):
            yield training_batch(target, self.batch, rng, self.sampler)


def target_terms(target: Target, t: Array, x: Array, xp, autodiff_terms: Callable, autodiff: bool):
    """(d_t log p (batch,), grad log p (batch, d), Hessian diagonal (batch, d)) at t (batch,):
    closed form for an OU target, ``autodiff_terms(log_prob, t, x)`` for a UserTarget (or when
    ``autodiff``)."""
    if isinstance(target, UserTarget):
        return autodiff_terms(target.log_prob, t, x)
    if autodiff:
        return autodiff_terms(lambda s, y: target.log_prob(s, y, xp), t, x)
    return target.terms(t, x, xp)


class FitResult(NamedTuple):
    """The trained fields (torch: in place; JAX: new modules) and the loss per step (steps,)."""

    drift: Any
    diffusion: Any
    losses: np.ndarray


def jet(field, t, x, order: int, route: str, hollow_jet, dense_jet) -> list:
    """``[f, D_dim f, ..., D_dim^order f]`` at (t (batch,), x (batch, d)), each (batch, d), by
    ``route``: "hollow" takes a backend's ``hollow_jet(net, t, x, order)`` (None when the field
    is no HollowNet of that backend) or a DimwiseField's callables; "dense" takes
    ``dense_jet(fn, t, x, order)`` for any field."""
    check_route(route)
    if route == "dense":
        out = dense_jet(field.fn if isinstance(field, DimwiseField) else field, t, x, order)
    elif hollow_jet is not None:
        out = hollow_jet(field, t, x, order)
    else:  # a DimwiseField (checked by the caller)
        out = [field.fn(t, x), *(fn(t, x) for fn in field.ddim[:order])]
    for k, value in enumerate(out):
        check_output(value.shape, x.shape, f"D_dim^{k} of the field" if k else "the field")
    return out


# --- argument checks: both backends raise the same words -------------------------------------


def check_route(route: Any) -> None:
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; available: {', '.join(ROUTES)}")


def check_output(shape: tuple, expected: tuple, name: str) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must return shape {tuple(expected)}, got {tuple(shape)}")


def check_sampling(ts: Any, dt: Any) -> tuple[float, ...]:
    """Output times (strictly increasing, >= 2, finite) and a step 0 < dt <= their span."""
    times = tuple(float(t) for t in np.asarray(ts, dtype=np.float64).reshape(-1))
    if len(times) < 2 or not all(math.isfinite(t) for t in times):
        raise ValueError(f"ts must hold at least two finite times, got {ts!r}")
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError(f"ts must be strictly increasing, got {times}")
    if (
        isinstance(dt, bool)
        or not isinstance(dt, int | float)
        or not 0 < dt <= times[-1] - times[0]
    ):
        raise ValueError(f"dt must be in (0, {times[-1] - times[0]:g}], got {dt!r}")
    return times


def check_fields(drift: Any, diffusion: Any, target: Any, route: Any, hollow_net: type) -> None:
    """The route, the target, and each field as ``route`` uses it (``hollow_net``: the calling
    backend's HollowNet class)."""
    check_route(route)
    if not isinstance(target, OUMixture | UserTarget):
        raise TypeError(
            f"target must be an OUMixture (ou_process, ou_mixture) or a UserTarget, "
            f"got {type(target).__name__}"
        )
    for field, name in ((drift, "drift"), (diffusion, "diffusion")):
        problem = _field_problem(field, name, route, target.dim, isinstance(field, hollow_net))
        if problem:
            raise ValueError(problem)


def _field_problem(field: Any, name: str, route: str, dim: int, hollow: bool) -> str | None:
    """Why ``field`` cannot serve as ``name`` on ``route`` (None when it can)."""
    spec = getattr(field, "spec", None)
    if spec is not None:
        if not spec.time_dependent:
            return f"{name} must be time-dependent (spec.time_dependent=True), called as net(t, x)"
        if spec.dim != dim:
            return f"{name} has dim {spec.dim} but the target has dim {dim}"
    elif isinstance(field, DimwiseField):
        if field.dim != dim:
            return f"{name} has dim {field.dim} but the target has dim {dim}"
    elif not callable(field):
        return f"{name} must be a model, a DimwiseField or a callable f(t, x), got {field!r}"
    if route == "hollow" and not hollow and not isinstance(field, DimwiseField):
        return (
            f"route 'hollow' needs {name} to be a HollowNet or a DimwiseField with explicit "
            f"D_dim callables, got {type(field).__name__}; use route='dense' for other fields"
        )
    order = DRIFT_ORDER if name == "drift" else DIFFUSION_ORDER
    if route == "hollow" and isinstance(field, DimwiseField) and len(field.ddim) < order:
        return f"{name} needs D_dim^1..{order} on route 'hollow', got {len(field.ddim)} callables"
    return None
