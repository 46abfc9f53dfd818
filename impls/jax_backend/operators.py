"""D_dim^k and the divergence in JAX, one function per method, dispatched through the registry
(:mod:`impls.methods`): this backend's operator of a method is ``op(call: Call) -> (f, values)``,
traced inside one jitted ``_compute``, values the trace (batch,) when ``call.trace``, else the
diagonal (batch, dim). Its options other than ``t``, ``key`` and ``seed`` are static
(hashable): each value compiles its own ``_compute``.

All methods are pure and traceable: wrap them in ``jax.jit`` (``k`` and ``method`` static) and
differentiate them with ``jax.grad`` with respect to x or the model; parameter gradients are
exact, the conditioner's share included.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from impls import _checks, methods
from impls._operators import fused_platform, hollow_forward, nested_jvp
from impls.jax_backend import estimators, fused_tau, taylor
from impls.jax_backend.models import HollowNet

Fn = Callable[[jax.Array], jax.Array]
# Options that are arrays or seeds, not static options of _compute.
_DYNAMIC = ("t", "key", "seed")


class Call(NamedTuple):
    """A checked call of an operator, while ``_compute`` traces it: ``fun`` is ``net`` at time
    ``t`` as a function of x (``net`` and ``t`` are None where an estimator is called on a
    function alone), ``key`` the probes' PRNG key (stochastic methods), ``opts`` the static
    options (hollow_forward's ``fused``: the platform of its fused tau kernel, see _static)."""

    net: Any
    fun: Fn
    x: jax.Array
    t: jax.Array | None
    key: jax.Array | None
    k: int
    opts: dict[str, Any]
    trace: bool


def ddim(net, x: jax.Array, k: int = 1, method: str = "hollow", **opts) -> jax.Array:
    """D_dim^k f(x), shape (batch, dim)."""
    return value_and_ddim(net, x, k, method, **opts)[1]


def divergence(net, x: jax.Array, method: str = "hollow", **opts) -> jax.Array:
    """sum_i df_i/dx_i, shape (batch,)."""
    return value_and_divergence(net, x, method, **opts)[1]


def value_and_ddim(
    net, x: jax.Array, k: int = 1, method: str = "hollow", **opts
) -> tuple[jax.Array, jax.Array]:
    """(f(x), D_dim^k f(x)), both (batch, dim), from one forward pass: a train step takes its
    loss on both and differentiates once, with no second ``net(x)``. (Under ``jit`` an unused
    f costs nothing: ``ddim`` is this, less f.)"""
    t = _prepare(net, x, k, method, opts)
    compute = _compute if hasattr(net, "spec") else _compute_own
    return compute(net, x, t, _key(method, opts), method=method, k=k, static=_static(method, opts))


def value_and_divergence(
    net, x: jax.Array, method: str = "hollow", **opts
) -> tuple[jax.Array, jax.Array]:
    """(f(x) (batch, dim), its divergence (batch,)) from one forward pass."""
    t = _prepare(net, x, 1, method, opts)
    static = _static(method, opts)
    compute = _compute if hasattr(net, "spec") else _compute_own
    return compute(net, x, t, _key(method, opts), method=method, k=1, trace=True, static=static)


def _static(method: str, opts: dict) -> tuple[tuple[str, Any], ...]:
    """_compute's static options, as sorted (name, value) pairs; ``fused``: the platform
    hollow_forward's fused tau kernel runs on (:func:`impls._operators.fused`), static so that
    a step traced with it and one traced without never share a compiled ``_compute``."""
    static = {name: value for name, value in opts.items() if name not in _DYNAMIC}
    platform = fused_platform()
    if method == "hollow_forward" and platform is not None:
        static["fused"] = platform
    return tuple(sorted(static.items()))


def _key(method: str, opts: dict) -> jax.Array | None:
    """The probes' PRNG key: ``key``, else one from ``seed``. Required, as everywhere in JAX:
    a silent default key would draw the same probes on every call of a training loop."""
    if not methods.REGISTRY[method].stochastic:
        return None
    key, seed = opts.get("key"), opts.get("seed")
    if key is None and seed is None:
        raise TypeError(
            f"method {method!r} needs its probes' randomness in JAX: pass key= (a PRNG key, "
            "e.g. a fresh jax.random.split of your key per call) or seed= (an int)"
        )
    return jax.random.key(seed) if key is None else key


def _compute_any(net, x, t, key, *, method, k, trace=False, static=()):
    """(f, values) of the checked call."""
    call = Call(net, _function(net, t), x, t, key, k, dict(static), trace)
    return methods.operator("jax", method)(call)


# The checked call compiled once per model structure and static option set, so eager calls run
# compiled code too (under an outer ``jit`` this simply inlines). A model of this backend is a
# pytree of arrays; one of the caller's own may hold functions and ints among its leaves (an
# equinox MLP's activation, its sizes), which equinox's filter makes static.
_compute = functools.partial(jax.jit, static_argnames=("method", "k", "trace", "static"))(
    _compute_any
)
_compute_own = eqx.filter_jit(_compute_any)


def _function(net, t) -> Fn:
    """y -> f(y): a model of this backend's at t; one of the caller's own, net(y), its output's
    shape checked (when traced: once per compilation)."""
    if hasattr(net, "spec"):
        return lambda y: net.evaluate(y, t)
    return _checks.checked_own_model(net, jax.Array, "jax.Array")


def stochastic(
    fun: Fn, x: jax.Array, key: jax.Array, method: str, trace: bool, *, n_probes: int = 1,
    n_matvecs: int | None = None, noise: str | None = None,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """(f, a stochastic method's estimate of the trace or diagonal of fun's Jacobian at x)."""
    opts = {"n_probes": n_probes, "n_matvecs": n_matvecs, "noise": noise}
    call = Call(None, fun, x, None, key, 1, {n: v for n, v in opts.items() if v is not None}, trace)
    return methods.operator("jax", method)(call)


def _exact(op: Callable[[Call], tuple[jax.Array, jax.Array]]) -> Callable:
    """An exact method's operator from its (f, diagonal): the trace is the diagonal's sum."""

    def run(call: Call) -> tuple[jax.Array, jax.Array]:
        f, diag = op(call)
        return f, (diag.sum(-1) if call.trace else diag)

    return run


def _hollow_forward(call: Call) -> tuple[jax.Array, jax.Array]:
    kernel = None  # the taylor module's, unless a fused variant is traced
    fused = call.opts.get("fused")
    if fused is not None:
        kernel = functools.partial(fused_tau.value_and_tangent, interpret=fused == "cpu")
    return hollow_forward(taylor, call.net, call.x, call.t, call.k, kernel)


def _hutchinson(call: Call) -> tuple[jax.Array, jax.Array]:
    noise = call.opts.get("noise") or methods.REGISTRY["hutchinson"].default_noise
    n_probes = call.opts.get("n_probes", 1)
    return hutchinson(call.fun, call.x, call.key, n_probes, noise, call.trace, with_value=True)


def _estimator(call: Call, method: str) -> tuple[jax.Array, jax.Array]:
    spec = methods.REGISTRY[method]
    noise = call.opts.get("noise") or spec.default_noise
    draw = lambda shape: _probes(call.key, shape, noise, call.x)  # noqa: E731
    n_matvecs = call.opts.get("n_matvecs") or spec.min_budget
    return estimators.estimate(method, call.fun, call.x, n_matvecs, draw, call.trace)


def _prepare(net, x, k, method, opts) -> jax.Array | None:
    """Check the call; return t as an array (or None)."""
    if not isinstance(x, jax.Array):
        raise TypeError(f"x must be a jax.Array, got {type(x).__name__}")
    if not hasattr(net, "spec"):
        return _prepare_own(net, x, k, method, opts)
    spec = net.spec
    methods.check_call(
        method=method,
        k=k,
        opts=opts,
        is_hollow=isinstance(net, HollowNet),
        model_name=type(spec).__name__,
        extra_opts=_extra_opts(method),
    )
    _checks.check_input(shape=x.shape, dtype=x.dtype.name, dim=spec.dim, model_dtype=spec.dtype)
    _check_device(x, next(iter(net.params.values())))
    check_finite(x, "x")
    t = opts.get("t")
    _checks.check_time(time_dependent=spec.time_dependent, t_given=t is not None)
    if t is not None:
        t = jnp.asarray(t, dtype=x.dtype)
        _checks.check_t_shape(t.shape, x.shape[0])
        check_finite(t, "t")
    return t


def _prepare_own(net, x, k, method, opts) -> None:
    """A model of the caller's own, without a spec (an equinox module, which may vmap a
    per-sample network, or any callable): its dim is x's, its dtype its floating array
    leaves'; it is called as net(x)."""
    if not callable(net):
        raise TypeError(_checks.NOT_A_MODEL.format(type(net).__name__))
    methods.check_call(
        method=method,
        k=k,
        opts=opts,
        is_hollow=False,
        model_name=type(net).__name__,
        extra_opts=_extra_opts(method),
    )
    params = [leaf for leaf in jax.tree.leaves(net) if eqx.is_inexact_array(leaf)]
    _checks.check_own_input(
        shape=x.shape, dtype=x.dtype.name, model_dtype=params[0].dtype.name if params else None
    )
    if params:
        _check_device(x, params[0])
    check_finite(x, "x")
    _checks.check_time(time_dependent=False, t_given=opts.get("t") is not None)


def _check_device(x: jax.Array, param: jax.Array) -> None:
    if is_concrete(x) and is_concrete(param) and x.devices() != param.devices():
        raise ValueError(f"x is on {x.devices()} but the model is on {param.devices()}")


def _extra_opts(method: str) -> dict[str, tuple[str, ...]] | None:
    """A stochastic method's PRNG ``key``: an option in JAX alone."""
    registered = methods.REGISTRY.get(method)
    return {method: ("key",)} if registered is not None and registered.stochastic else None


def is_concrete(a: jax.Array) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_finite(a: jax.Array, name: str) -> None:
    # A traced input has no value yet, so only concrete ones are checked; eagerly, also when
    # a concrete input is closed over by a function being traced.
    if not is_concrete(a):
        return
    with jax.ensure_compile_time_eval():
        finite = bool(jnp.isfinite(a).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or inf")


def _hollow(net: HollowNet, x: jax.Array, t, k: int) -> tuple[jax.Array, jax.Array]:
    """The paper's way: k reverse passes through the transformer alone; f is their forward.

    h is computed from x outside the differentiated function, so ``grad`` with respect to the
    transformer's input holds it fixed, while an outer ``grad`` still reaches the conditioner
    through h. (A ``stop_gradient`` on h would drop the conditioner's parameter gradients.)
    """
    h = net.conditioner(x, t)

    def fun(y):
        value = net.transformer(y, h, t)
        return value, value  # (the function differentiated, f riding along as aux)

    for _ in range(k):
        # tau is separable in its x input, so the gradient of the sum is the diagonal.
        fun = _grad_of_sum_with_aux(fun)
    deriv, value = fun(x)
    return value, deriv


def _grad_of_sum(g: Fn) -> Fn:
    return jax.grad(lambda y: g(y).sum())


def _grad_of_sum_with_aux(g):
    return jax.grad(lambda y: (lambda out, aux: (out.sum(), aux))(*g(y)), has_aux=True)


def dense_loop(fun: Fn, x: jax.Array, k: int, with_value: bool = False):
    """FFJORD's divergence_bf: d sequential reverse passes (``lax.map``), k nested per output.
    ``with_value``: (f, D_dim^k f); for k = 1 f is the forward the pullbacks share, for k > 1
    (each output's nested passes rerun their own forward) one more forward."""
    d = x.shape[1]
    if k == 1:  # one forward, shared by the d pullbacks
        f, pullback = jax.vjp(fun, x)

        def column(i):
            e = jnp.broadcast_to(jax.nn.one_hot(i, d, dtype=x.dtype), x.shape)
            return pullback(e)[0][:, i]

    else:
        f = fun(x)

        def column(i):
            g = _component(fun, i)
            for _ in range(k):
                g = _component(_grad_of_sum(g), i)
            return g(x)

    out = jax.lax.map(column, jnp.arange(d)).T
    return (f, out) if with_value else out


def _component(g: Fn, i: jax.Array) -> Fn:
    return lambda y: g(y)[:, i]


def dense_vectorized(
    fun: Fn, x: jax.Array, k: int, chunk_size: int | None, with_value: bool = False
):
    """vmap over the d basis directions e_i of k nested JVPs along e_i, keeping component i.

    For k=1 this is jacfwd's computation (the whole Jacobian) followed by its diagonal; for k>1
    it is the diagonal of each output's k-th derivative tensor without materialising it.
    ``chunk_size`` bounds memory by mapping over chunks of directions. ``with_value``:
    (f, D_dim^k f), f the primal those JVPs compute anyway.
    """
    basis = jnp.eye(x.shape[1], dtype=x.dtype)

    def along(e: jax.Array):
        value, deriv = nested_jvp(jax.jvp, fun, x, jnp.broadcast_to(e, x.shape), k)
        return value, (deriv * e).sum(-1)

    if chunk_size is None:
        out = jax.vmap(along)(basis)
    else:
        out = jax.lax.map(along, basis, batch_size=chunk_size)
    return (out[0][0], out[1].T) if with_value else out[1].T


def hutchinson(
    fun: Fn,
    x: jax.Array,
    key: jax.Array,
    n_probes: int,
    noise: str,
    trace: bool,
    with_value: bool = False,
):
    """Unbiased estimates with m probes e: the trace e^T J e (one VJP each, as FFJORD) or the
    diagonal e * (J e) (one JVP each). ``with_value``: (f, estimate), f from the forward the
    VJP (or JVP) runs anyway."""
    probes = _probes(key, (n_probes, *x.shape), noise, x)
    if trace:
        f, pullback = jax.vjp(fun, x)
        estimates = jax.vmap(lambda e: (pullback(e)[0] * e).sum(-1))(probes)
    else:
        f, tangents = jax.vmap(lambda e: jax.jvp(fun, (x,), (e,)), out_axes=(None, 0))(probes)
        estimates = probes * tangents
    return (f, estimates.mean(0)) if with_value else estimates.mean(0)


def _probes(key: jax.Array, shape: tuple, noise: str, like: jax.Array) -> jax.Array:
    if noise == "gaussian":
        return jax.random.normal(key, shape, dtype=like.dtype)
    return jax.random.rademacher(key, shape, dtype=like.dtype)


methods.implement(
    "jax",
    {
        "hollow": _exact(lambda c: _hollow(c.net, c.x, c.t, c.k)),
        "hollow_forward": _exact(_hollow_forward),
        "dense_loop": _exact(lambda c: dense_loop(c.fun, c.x, c.k, with_value=True)),
        "dense_vectorized": _exact(
            lambda c: dense_vectorized(c.fun, c.x, c.k, c.opts.get("chunk_size"), with_value=True)
        ),
        "hutchinson": _hutchinson,
        **{name: functools.partial(_estimator, method=name) for name in methods.ESTIMATORS},
    },
)
