"""Continuous normalizing flows in JAX: the PyTorch backend's ``cnf`` API on diffrax (Dopri5
or Tsit5, a PID controller, ``RecursiveCheckpointAdjoint`` or ``BacksolveAdjoint``). Pure and
traceable; probes come from ``key`` (else ``seed``). NFE are derived (``NFE_KIND``): diffrax
counts steps, so ``nfe_forward = 6 n_steps + 1`` (FSAL; a test counts the calls), and
``nfe_backward`` is None (reverse mode and the adjoint report no count).

>>> (loss, stats), grads = eqx.filter_value_and_grad(nll, has_aux=True)(net, x, config, key=k)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from impls import cnf
from impls.cnf import DEFAULT_CONFIG, STOCHASTIC_TRACES, FlowConfig, TrainResult
from impls.jax_backend import operators
from impls.jax_backend.models import HollowNet, _Model

SOLVERS = ("dopri5", "tsit5")
NFE_KIND = "derived"  # nfe_forward from diffrax's step count, nfe_backward not known
_SOLVER_CLASSES = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5}


def _is_model(field: Any) -> bool:
    return isinstance(field, _Model)


def _value_and_divergence(field: Callable, x, t, key, config: FlowConfig):
    """(f(t, x), div f(t, x)) from one pass of the field: the divergence's own forward."""
    method = config.method
    if _is_model(field):
        opts = {"t": t} if field.spec.time_dependent else {}
        if method in STOCHASTIC_TRACES:
            opts |= {"key": key, **config.probe_opts}
        return operators.value_and_divergence(field, x, method, **opts)
    # A plain callable: the same operator code, on f(t, .)
    fun = lambda y: field(t, y)  # noqa: E731
    if method in STOCHASTIC_TRACES:
        return operators.stochastic(fun, x, key, method, trace=True, **config.probe_opts)
    if method == "dense_loop":
        f, diag = operators.dense_loop(fun, x, 1, with_value=True)
    else:
        f, diag = operators.dense_vectorized(fun, x, 1, None, with_value=True)
    return f, diag.sum(-1)


@eqx.filter_jit
def _integrate(field, y0: jax.Array, t0: jax.Array, t1: jax.Array, key, config: FlowConfig):
    """Solve ``d/dt [x, a] = [f, -div f]`` from t0 to t1: (y(t1), a(t1), stats); the field's
    arrays travel in ``args``, which BacksolveAdjoint differentiates."""
    params, static = eqx.partition(field, eqx.is_inexact_array)

    def vector_field(t, state, args):
        params, key = args
        f = eqx.combine(params, static)
        x = state[0]
        dx, div = _value_and_divergence(f, x, t, key, config)
        return dx, -div

    adjoint = diffrax.BacksolveAdjoint() if config.adjoint else diffrax.RecursiveCheckpointAdjoint()
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        _SOLVER_CLASSES[config.solver](),
        t0,
        t1,
        None,
        (y0, jnp.zeros(y0.shape[0], y0.dtype)),
        args=(params, key),
        stepsize_controller=diffrax.PIDController(rtol=config.rtol, atol=config.atol),
        adjoint=adjoint,
        max_steps=config.max_steps,
    )
    n_steps = sol.stats["num_steps"]
    stats = {
        "n_steps": n_steps,
        "n_accepted": sol.stats["num_accepted_steps"],
        "n_rejected": sol.stats["num_rejected_steps"],
        "nfe_forward": cnf.EVALS_PER_STEP[config.solver] * n_steps + 1,
        "nfe_backward": None,
    }
    return sol.ys[0][-1], sol.ys[1][-1], stats


def _check(field: Any, x: Any, config: FlowConfig, seed: Any, name: str = "x") -> None:
    # FlowConfig admits only cnf.SOLVERS, which diffrax has all of.
    cnf.check_flow(field, config, seed, isinstance(field, HollowNet))
    if not isinstance(x, jax.Array):
        raise TypeError(f"{name} must be a jax.Array, got {type(x).__name__}")
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    spec = field.spec if _is_model(field) else None
    cnf.check_rows(name, x.shape, x.dtype.name, floating, spec)
    operators.check_finite(x, name)


def _key(key: jax.Array | None, seed: int, like: jax.Array) -> jax.Array:
    """``key``, else one from ``seed``, on ``like``'s device when that is known."""
    if key is None:
        key = jax.random.key(seed)
        if operators.is_concrete(like):
            key = jax.device_put(key, like.sharding)
    return key


def _flow(field, x, config, name: str, backwards: bool, *, key=None, seed: Any = 0):
    """Check, then solve from 0 to t1 (or back) with probes from ``key`` (else ``seed``)."""
    _check(field, x, config, seed, name)
    # Traced times: encode and decode share a compilation.
    t0, t1 = (jnp.asarray(t, x.dtype) for t in (0.0, config.t1)[:: -1 if backwards else 1])
    return _integrate(field, x, t0, t1, _key(key, seed, x), config)


def encode(
    field: Callable,
    x: jax.Array,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    key: jax.Array | None = None,
    seed: int = 0,
) -> tuple[jax.Array, jax.Array, dict]:
    """x -> z = x(t1): (z, delta_logp, stats), with ``log p(x) = log N(z) - delta_logp``;
    the probes from ``key`` (a jax PRNG key), else ``seed``."""
    return _flow(field, x, config, "x", False, key=key, seed=seed)


def decode(
    field: Callable,
    z: jax.Array,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    key: jax.Array | None = None,
    seed: int = 0,
) -> tuple[jax.Array, jax.Array, dict]:
    """z -> x = x(0), integrating back from t1: (x, delta_logp, stats), with the same
    ``log p(x) = log N(z) - delta_logp``; ``key`` and ``seed`` as for encode."""
    x, acc, stats = _flow(field, z, config, "z", True, key=key, seed=seed)
    return x, -acc, stats


def log_likelihood(
    field: Callable,
    x: jax.Array,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    key: jax.Array | None = None,
    seed: int = 0,
) -> tuple[jax.Array, dict]:
    """log p(x) in model space, (batch,), and the solve's stats; ``key``, ``seed``: encode's."""
    z, delta_logp, stats = encode(field, x, config, key=key, seed=seed)
    return cnf.standard_normal_logpdf(z) - delta_logp, stats


def nll(
    field: Callable,
    x: jax.Array,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    key: jax.Array | None = None,
    seed: int = 0,
) -> tuple[jax.Array, dict]:
    """The training loss: mean negative log-likelihood of the batch (nats, model space)."""
    logp, stats = log_likelihood(field, x, config, key=key, seed=seed)
    return -logp.mean(), stats


def sample(
    net: _Model,
    n: int,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    key: jax.Array | None = None,
    seed: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """n samples of a built model's flow, (x, log p(x)); ``key`` (else ``seed``) is split into
    the draw's and the probes' keys."""
    if not _is_model(net):
        raise TypeError("sample needs a model built by this backend; decode any z instead")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    param = next(iter(net.params.values()))
    key_z, key_probes = jax.random.split(_key(key, cnf.check_seed(seed), param))
    z = jax.random.normal(key_z, (n, net.spec.dim), dtype=param.dtype)
    x, delta_logp, _ = decode(net, z, config, key=key_probes)
    return x, cnf.standard_normal_logpdf(z) - delta_logp


def held_out_log_likelihood(
    field: _Model,
    data: np.ndarray,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    seed: int = 0,
    batch: int = 512,
) -> np.ndarray:
    """The PyTorch backend's ``held_out_log_likelihood``, in batches of one shape (the last
    padded), so one compilation serves them all."""
    param = next(iter(field.params.values()))
    data = cnf.check_data(data, field.spec.dim)
    cnf.check_seed(seed)
    batch = min(batch, len(data))
    out = []
    for i, start in enumerate(range(0, len(data), batch)):
        rows = data[start : start + batch]
        padded = np.concatenate([rows, np.repeat(rows[-1:], batch - len(rows), 0)])
        x = jax.device_put(jnp.asarray(padded, dtype=param.dtype), param.sharding)
        key = _key(None, cnf.probe_seed(seed, i), param)
        logp, _ = log_likelihood(field, x, config, key=key)
        out.append(np.asarray(logp, dtype=np.float64)[: len(rows)])
    return np.concatenate(out)


def train(
    field: _Model,
    data: np.ndarray,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    steps: int | None = None,
    budget_s: float | None = None,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> TrainResult:
    """The PyTorch backend's ``train`` with optax's Adam, the step compiled before the clock
    starts; the result holds the new field."""
    import optax

    opts = cnf.TrainOptions(steps, budget_s, batch, lr, seed)
    source = opts.batches(data, field.spec.dim)
    param = next(iter(field.params.values()))
    params, static = eqx.partition(field, eqx.is_inexact_array)
    optimizer = optax.adam(opts.lr)

    def step(params, opt_state, x, key):
        loss_fn = eqx.filter_value_and_grad(nll, has_aux=True)
        (loss, stats), grads = loss_fn(eqx.combine(params, static), x, config, key=key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, stats

    def inputs(iteration: int) -> tuple[jax.Array, jax.Array]:
        x = jax.device_put(jnp.asarray(next(source), dtype=param.dtype), param.sharding)
        key = jax.device_put(jax.random.key(cnf.probe_seed(opts.seed, iteration)), param.sharding)
        return x, key

    opt_state = optimizer.init(params)
    first = inputs(0)
    compiled = jax.jit(step).lower(params, opt_state, *first).compile()

    def iteration(i: int) -> tuple[jax.Array, dict]:
        nonlocal params, opt_state
        params, opt_state, loss, stats = compiled(params, opt_state, *(inputs(i) if i else first))
        return loss, stats

    result = opts.run(field, iteration)
    result.field = eqx.combine(params, static)
    return result
