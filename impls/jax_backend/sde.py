"""SDEs by Fokker-Planck matching in JAX: the PyTorch backend's ``sde`` API, training with
optax, sampling with diffrax. The hollow route nests JVPs with tangent 1 through the
transformer (exact: it is separable). Pure and compiled (``eqx.filter_jit``); ``fit`` returns
new modules.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from impls import _stiff, sde
from impls._checks import check_t_shape
from impls.jax_backend.models import HollowNet
from impls.jax_backend.operators import check_finite, is_concrete
from impls.sde import FitResult, Target


def fp_residual(
    drift: Any,
    diffusion: Any,
    target: Target,
    t: Any,
    x: jax.Array,
    *,
    route: str = "hollow",
    chunk_size: int | None = None,
) -> jax.Array:
    """The Fokker-Planck residual of ``dx = drift dt + diag(diffusion) dW`` against ``target``
    at times ``t`` (scalar or (batch,)) and ``x`` (batch, d): (batch,). ``chunk_size`` bounds
    the dense route's memory (basis directions per map)."""
    t = _prepare(drift, diffusion, target, t, x, route)
    return _residual(drift, diffusion, target, t, x, route, chunk_size)


def fp_loss(drift: Any, diffusion: Any, target: Target, t: Any, x: jax.Array, **opts) -> jax.Array:
    """Mean squared residual over the batch, the Fokker-Planck-matching loss."""
    return jnp.mean(fp_residual(drift, diffusion, target, t, x, **opts) ** 2)


@eqx.filter_jit
def _residual(drift, diffusion, target, t, x, route, chunk_size) -> jax.Array:
    f, df = dimwise_jet(drift, t, x, sde.DRIFT_ORDER, route, chunk_size=chunk_size)
    g, dg, d2g = dimwise_jet(diffusion, t, x, sde.DIFFUSION_ORDER, route, chunk_size=chunk_size)
    return sde.residual(*target_terms(target, t, x), f, df, g, dg, d2g)


def _prepare(drift, diffusion, target, t, x, route) -> jax.Array:
    """Check the call; t as a (batch,) array of x's dtype."""
    sde.check_fields(drift, diffusion, target, route, HollowNet)
    if not isinstance(x, jax.Array):
        raise TypeError(f"x must be a jax.Array, got {type(x).__name__}")
    _stiff.check_state(x.shape, x.dtype.name, target.dim, "x", "target", "sample")
    for field, name in ((drift, "drift"), (diffusion, "diffusion")):
        _check_model(field, x, name)
    t = jnp.asarray(t, dtype=x.dtype)
    check_t_shape(tuple(t.shape), x.shape[0])
    check_finite(x, "x")
    check_finite(t, "t")
    return jnp.broadcast_to(t.reshape(-1), (x.shape[0],))


def _check_model(field: Any, x: jax.Array, name: str) -> None:
    if not isinstance(field, eqx.Module) or not hasattr(field, "spec"):
        return
    if field.spec.dtype != x.dtype.name:
        raise TypeError(f"x has dtype {x.dtype} but {name} is {field.spec.dtype}; cast one")
    param = next(iter(field.params.values()))
    if is_concrete(x) and is_concrete(param) and x.devices() != param.devices():
        raise ValueError(f"x is on {x.devices()} but {name} is on {param.devices()}")


@eqx.filter_jit
def dimwise_jet(
    field: Any, t: jax.Array, x: jax.Array, order: int, route: str, *, chunk_size=None
) -> list[jax.Array]:
    """``[f, D_dim f, ..., D_dim^order f]`` at (t (batch,), x (batch, d)), each (batch, d)."""
    hollow = _hollow_jet if isinstance(field, HollowNet) else None
    return sde.jet(
        field, t, x, order, route, hollow, functools.partial(_dense_jet, chunk_size=chunk_size)
    )


def _hollow_jet(net: HollowNet, t: jax.Array, x: jax.Array, order: int) -> list[jax.Array]:
    """One conditioner pass, then nested JVPs with tangent 1 through the transformer alone: h
    is computed outside them, so they hold it fixed while an outer ``grad`` reaches it."""
    h = net.conditioner(x, t)
    ones = jnp.ones_like(x)

    def jet(y: jax.Array, k: int) -> tuple[jax.Array, ...]:
        """(tau, d tau, ..., d^k tau) along 1 at y: each level's JVP carries the one below."""
        if k == 0:
            return (net.transformer(y, h, t),)
        values, tangents = jax.jvp(lambda z: jet(z, k - 1), (y,), (ones,))
        return (*values, tangents[-1])

    return list(jet(x, order))


def _dense_jet(fn, t: jax.Array, x: jax.Array, order: int, *, chunk_size) -> list[jax.Array]:
    """The value, then nested JVPs along each basis direction e_i (vmapped, or mapped in
    chunks), keeping component i: the diagonals of the Jacobian and of each output's Hessian."""
    along_x = lambda y: fn(t, y)  # noqa: E731

    def along(e: jax.Array) -> tuple[jax.Array, ...]:
        tangent = jnp.broadcast_to(e, x.shape)
        if order == 1:
            return ((jax.jvp(along_x, (x,), (tangent,))[1] * e).sum(-1),)
        first = lambda y: jax.jvp(along_x, (y,), (tangent,))[1]  # noqa: E731
        d1, d2 = jax.jvp(first, (x,), (tangent,))
        return (d1 * e).sum(-1), (d2 * e).sum(-1)

    basis = jnp.eye(x.shape[1], dtype=x.dtype)
    if chunk_size is None:
        derivs = jax.vmap(along)(basis)
    else:
        derivs = jax.lax.map(along, basis, batch_size=chunk_size)
    return [fn(t, x), *(d.T for d in derivs)]


@eqx.filter_jit
def target_terms(
    target: Target, t: jax.Array, x: jax.Array, *, autodiff: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`impls.sde.target_terms` here."""
    return sde.target_terms(target, t, x, jnp, _autodiff_terms, autodiff)


def _autodiff_terms(log_prob, t: jax.Array, x: jax.Array) -> tuple[jax.Array, ...]:
    """Gradients of the batch sum are per-sample (rows are independent); the Hessian diagonal
    takes one forward-over-reverse pass per dimension."""
    sde.check_output(jax.eval_shape(log_prob, t, x).shape, x.shape[:1], "log_prob")
    score_fn = jax.grad(lambda y: log_prob(t, y).sum())
    basis = jnp.eye(x.shape[1], dtype=x.dtype)
    hess = jax.vmap(
        lambda e: (jax.jvp(score_fn, (x,), (jnp.broadcast_to(e, x.shape),))[1] * e).sum(-1)
    )(basis).T
    dt = jax.grad(lambda s: log_prob(s, x).sum())(t)
    return dt, score_fn(x), hess


def fit(
    drift: eqx.Module,
    diffusion: eqx.Module,
    target: Target,
    *,
    steps: int = 500,
    batch: int = 256,
    lr: float = 1e-2,
    route: str = "hollow",
    seed: int = 0,
    sampler: sde.Sampler | None = None,
) -> FitResult:
    """The PyTorch backend's ``fit``, with optax's Adam."""
    opts = sde.FitOptions(steps, batch, lr, route, seed, sampler)
    for field, name in ((drift, "drift"), (diffusion, "diffusion")):
        if not isinstance(field, eqx.Module) or not hasattr(field, "params"):
            raise TypeError(f"fit trains models of this backend; {name} is {type(field).__name__}")
    _prepare(drift, diffusion, target, 0.0, _like(drift, np.zeros((1, target.dim))), route)
    try:
        import optax
    except ImportError as err:
        raise ImportError("fit needs optax: pip install 'hollowbench[sde]'") from err
    optimizer = optax.adam(opts.lr)

    @jax.jit
    def step(models, state, t, x):
        loss, grads = jax.value_and_grad(
            lambda m: jnp.mean(_residual(*m, target, t, x, route, None) ** 2)
        )(models)
        updates, state = optimizer.update(grads, state, models)
        return optax.apply_updates(models, updates), state, loss

    models = (drift, diffusion)
    # Committed to the models' device like every later state, so step compiles only once.
    state = jax.device_put(optimizer.init(models), _device(drift))
    losses = []
    for batch in opts.batches(target):
        t, x = (_like(drift, a) for a in batch)
        models, state, loss = step(models, state, t, x)
        losses.append(loss)
    return FitResult(*models, np.asarray(jnp.stack(losses)))


def _device(model: eqx.Module) -> jax.Device:
    return next(iter(model.params.values())).devices().pop()


def _like(model: eqx.Module, a: np.ndarray) -> jax.Array:
    """``a`` in the model's dtype, on its device."""
    return jax.device_put(jnp.asarray(a, dtype=model.spec.dtype), _device(model))


def sample_sde(
    drift: Any,
    diffusion: Any,
    x0: jax.Array,
    ts: Sequence[float],
    *,
    dt: float = 1e-2,
    seed: int = 0,
) -> jax.Array:
    """The PyTorch backend's ``sample_sde``, by diffrax's Euler-Maruyama on a
    ``VirtualBrownianTree`` from ``seed``; fields are called as ``f(t, x)``, t a 0-d array."""
    times = sde.check_sampling(ts, dt)
    if not isinstance(x0, jax.Array) or x0.ndim != 2:
        raise ValueError("x0 must be a (n, d) jax.Array")
    try:
        import diffrax
        import lineax
    except ImportError as err:
        raise ImportError("sample_sde needs diffrax: pip install 'hollowbench[sde]'") from err
    n_steps = math.ceil((times[-1] - times[0]) / dt * (1 + 1e-9)) + 1

    @eqx.filter_jit
    def solve(drift, diffusion, x0):
        shape = x0.shape

        def flat(field):  # diffrax's state is the flattened (n * d,) batch
            return lambda t, y, args: field(t, y.reshape(shape)).reshape(-1)

        brownian = diffrax.VirtualBrownianTree(
            times[0], times[-1], tol=dt / 10,
            shape=jax.ShapeDtypeStruct((x0.size,), x0.dtype), key=jax.random.key(seed),
        )  # fmt: skip
        noise = flat(diffusion)
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(flat(drift)),
            # diagonal noise: each component of the state gets its own Brownian motion
            diffrax.ControlTerm(
                lambda t, y, args: lineax.DiagonalLinearOperator(noise(t, y, args)), brownian
            ),
        )
        solution = diffrax.diffeqsolve(
            terms, diffrax.Euler(), times[0], times[-1], dt0=dt, y0=x0.reshape(-1),
            saveat=diffrax.SaveAt(ts=jnp.asarray(times, dtype=x0.dtype)), max_steps=n_steps,
        )  # fmt: skip
        return solution.ys.reshape(len(times), *shape)

    return solve(drift, diffusion, x0)
