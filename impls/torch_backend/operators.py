"""D_dim^k and the divergence in PyTorch, one function per method, dispatched through the
registry (:mod:`impls.methods`): this backend's operator of a method is ``op(call: Call) ->
(f, values)``, values the trace (batch,) when ``call.trace``, else the diagonal (batch, dim).

Every method returns a tensor that back-propagates to x and to *all* parameters whenever grad
mode is on when it is called; under ``torch.no_grad()`` it returns a plain tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.func import jvp, vmap

from impls import _checks, methods
from impls._operators import fused_platform, hollow_forward, nested_jvp
from impls.torch_backend import estimators, taylor
from impls.torch_backend.models import HollowNet

Fn = Callable[[torch.Tensor], torch.Tensor]


class Call(NamedTuple):
    """A checked call of an operator: ``fun`` is ``net`` at time ``t`` as a function of x
    (``net`` and ``t`` are None where an estimator is called on a function alone)."""

    net: Any
    fun: Fn
    x: torch.Tensor
    t: torch.Tensor | None
    k: int
    opts: dict[str, Any]
    trace: bool


def ddim(net, x: torch.Tensor, k: int = 1, method: str = "hollow", **opts) -> torch.Tensor:
    """D_dim^k f(x), shape (batch, dim)."""
    return value_and_ddim(net, x, k, method, **opts)[1]


def divergence(net, x: torch.Tensor, method: str = "hollow", **opts) -> torch.Tensor:
    """sum_i df_i/dx_i, shape (batch,)."""
    return value_and_divergence(net, x, method, **opts)[1]


def value_and_ddim(
    net, x: torch.Tensor, k: int = 1, method: str = "hollow", **opts
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), D_dim^k f(x)), both (batch, dim), from one forward pass: a train step takes its
    loss on both and runs one backward, with no second ``net(x)``."""
    fun, t = _prepare(net, x, k, method, opts)
    return methods.operator("torch", method)(Call(net, fun, x, t, k, opts, trace=False))


def value_and_divergence(
    net, x: torch.Tensor, method: str = "hollow", **opts
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x) (batch, dim), its divergence (batch,)) from one forward pass."""
    fun, t = _prepare(net, x, 1, method, opts)
    return methods.operator("torch", method)(Call(net, fun, x, t, 1, opts, trace=True))


def stochastic(fun: Fn, x: torch.Tensor, method: str, opts: dict, trace: bool):
    """(f, a stochastic method's estimate of the trace or diagonal of fun's Jacobian at x)."""
    return methods.operator("torch", method)(Call(None, fun, x, None, 1, opts, trace))


def _exact(op: Callable[[Call], tuple[torch.Tensor, torch.Tensor]]) -> Callable:
    """An exact method's operator from its (f, diagonal): the trace is the diagonal's sum."""

    def run(call: Call) -> tuple[torch.Tensor, torch.Tensor]:
        f, diag = op(call)
        return f, (diag.sum(-1) if call.trace else diag)

    return run


def _estimator(call: Call, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    spec = methods.REGISTRY[method]
    n_matvecs = call.opts.get("n_matvecs", spec.min_budget)
    noise, seed = call.opts.get("noise", spec.default_noise), call.opts.get("seed")
    draw = lambda shape: _probes(shape, noise, seed, call.x)  # noqa: E731
    return estimators.estimate(method, call.fun, call.x, n_matvecs, draw, call.trace)


def _fused_kernel() -> Callable | None:
    """The fused Triton tau kernel while a step runs as the ``triton`` variant, else None."""
    if fused_platform() is None:
        return None
    from impls.torch_backend import fused_tau  # imports triton: only for this variant

    return fused_tau.value_and_tangent


def _prepare(net, x, k, method, opts) -> tuple[Fn, torch.Tensor | None]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not hasattr(net, "spec"):
        return _prepare_own(net, x, k, method, opts), None
    spec = net.spec
    methods.check_call(
        method=method,
        k=k,
        opts=opts,
        is_hollow=isinstance(net, HollowNet),
        model_name=type(spec).__name__,
    )
    _checks.check_input(
        shape=tuple(x.shape),
        dtype=str(x.dtype).removeprefix("torch."),
        dim=spec.dim,
        model_dtype=spec.dtype,
    )
    param = next(iter(net.parameters()))
    if x.device != param.device:
        raise ValueError(f"x is on {x.device} but the model is on {param.device}")
    check_finite(x, "x")
    t = opts.get("t")
    _checks.check_time(time_dependent=spec.time_dependent, t_given=t is not None)
    if t is not None:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        _checks.check_t_shape(tuple(t.shape), x.shape[0])
        check_finite(t, "t")
    return (lambda y: net.evaluate(y, t)), t


def _prepare_own(net, x, k, method, opts) -> Fn:
    """A model of the caller's own, without a spec (an ``nn.Module`` or any callable): its dim
    is x's and its dtype its floating parameters'; it is called as net(x), and its output's
    shape is checked on every call (a Python comparison: free next to the call)."""
    if not callable(net):
        raise TypeError(_checks.NOT_A_MODEL.format(type(net).__name__))
    methods.check_call(
        method=method, k=k, opts=opts, is_hollow=False, model_name=type(net).__name__
    )
    params = [p for p in _parameters(net) if p.is_floating_point()]
    _checks.check_own_input(
        shape=tuple(x.shape),
        dtype=str(x.dtype).removeprefix("torch."),
        model_dtype=str(params[0].dtype).removeprefix("torch.") if params else None,
    )
    if params and x.device != params[0].device:
        raise ValueError(f"x is on {x.device} but the model is on {params[0].device}")
    check_finite(x, "x")
    _checks.check_time(time_dependent=False, t_given=opts.get("t") is not None)
    return _checks.checked_own_model(net, torch.Tensor, "torch.Tensor")


def _parameters(net) -> list[torch.Tensor]:
    return list(net.parameters()) if isinstance(net, torch.nn.Module) else []


def check_finite(a: torch.Tensor, name: str) -> None:
    # Reading the flag syncs the device; a CUDA graph capture or torch.compile trace can't.
    if torch.compiler.is_compiling() or (a.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _hollow(net: HollowNet, x: torch.Tensor, t, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's way: k reverse passes through the transformer alone; f is their forward."""
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        h = net.conditioner(x, t)
        # A node that feeds tau only: differentiating by it holds h = c(x) fixed, while the
        # result stays in the graph of x and the parameters (h.detach() would drop c's share).
        x_tau = x.clone() if x.requires_grad else x.detach().requires_grad_()
        out = value = net.transformer(x_tau, h, t)
        for j in range(k):
            # tau is separable in x_tau, so the gradient of the sum is the diagonal.
            (out,) = torch.autograd.grad(
                out.sum(),
                x_tau,
                create_graph=keep_graph or j < k - 1,
                retain_graph=keep_graph or j < k - 1,
                allow_unused=True,  # an affine tau (no hidden layer) leaves no x_tau path
                materialize_grads=True,
            )
            if j < k - 1 and not out.requires_grad:  # constant in x: higher orders vanish
                out = torch.zeros_like(x)
                break
    return (value, out) if keep_graph else (value.detach(), out)


def dense_loop(fun: Fn, x: torch.Tensor, k: int, with_value: bool = False):
    """FFJORD's divergence_bf: one forward, then k reverse passes per output dimension.
    ``with_value``: (f, D_dim^k f), f from that one forward."""
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x_in = x if x.requires_grad else x.detach().requires_grad_()
        f = fun(x_in)
        columns = []
        for i in range(x.shape[1]):
            g = f[:, i]
            for j in range(k):
                (grad,) = torch.autograd.grad(
                    g.sum(), x_in, create_graph=keep_graph or j < k - 1, retain_graph=True
                )
                g = grad[:, i]
            columns.append(g)
    out = torch.stack(columns, dim=1)
    return ((f if keep_graph else f.detach()), out) if with_value else out


def dense_vectorized(
    fun: Fn, x: torch.Tensor, k: int, chunk_size: int | None, with_value: bool = False
):
    """vmap over the d basis directions e_i of k nested JVPs along e_i, keeping component i.

    For k=1 this is jacfwd's computation (the whole Jacobian) followed by its diagonal; for k>1
    it is the diagonal of each output's k-th derivative tensor without materialising it.
    ``with_value``: (f, D_dim^k f), f the primal those JVPs compute anyway.
    """
    basis = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)

    def along(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, deriv = nested_jvp(jvp, fun, x, e.expand_as(x), k)
        return value, (deriv * e).sum(-1)

    values, diag = vmap(along, chunk_size=chunk_size)(basis)
    return (values[0], diag.T) if with_value else diag.T


def hutchinson(fun: Fn, x: torch.Tensor, opts: dict, trace: bool, with_value: bool = False):
    """Unbiased estimates with m probes e: the trace e^T J e (one VJP each, as FFJORD) or the
    diagonal e * (J e) (one JVP each). Probes come from ``seed``, else the global generator.
    ``with_value``: (f, estimate), f from the forward the VJP (or JVP) runs anyway."""
    n_probes, noise = opts.get("n_probes", 1), opts.get("noise", "rademacher")
    probes = _probes((n_probes, *x.shape), noise, opts.get("seed"), x)
    if not trace:
        values, est = vmap(lambda e: (lambda p, d: (p, e * d))(*jvp(fun, (x,), (e,))))(probes)
        return (values[0], est.mean(0)) if with_value else est.mean(0)
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x_in = x if x.requires_grad else x.detach().requires_grad_()
        f = fun(x_in)
        if n_probes == 1:
            (e_j,) = torch.autograd.grad(f, x_in, probes[0], create_graph=keep_graph)
        else:  # one vectorised VJP over all probes
            (e_j,) = torch.autograd.grad(
                f, x_in, probes, create_graph=keep_graph, is_grads_batched=True
            )
    est = (e_j * probes).sum(-1).mean(0)
    return ((f if keep_graph else f.detach()), est) if with_value else est


def _probes(shape: tuple, noise: str, seed: int | None, like: torch.Tensor) -> torch.Tensor:
    """Rademacher or Gaussian probes; a given seed makes them reproducible on any device."""
    gen = None
    if seed is not None:
        gen = torch.Generator(device=like.device).manual_seed(int(seed))
    if noise == "gaussian":
        return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)
    bits = torch.randint(0, 2, shape, generator=gen, device=like.device)
    return (2 * bits - 1).to(like.dtype)


methods.implement(
    "torch",
    {
        "hollow": _exact(lambda c: _hollow(c.net, c.x, c.t, c.k)),
        "hollow_forward": _exact(
            lambda c: hollow_forward(taylor, c.net, c.x, c.t, c.k, _fused_kernel())
        ),
        "dense_loop": _exact(lambda c: dense_loop(c.fun, c.x, c.k, with_value=True)),
        "dense_vectorized": _exact(
            lambda c: dense_vectorized(c.fun, c.x, c.k, c.opts.get("chunk_size"), with_value=True)
        ),
        "hutchinson": lambda c: hutchinson(c.fun, c.x, c.opts, c.trace, with_value=True),
        **{name: functools.partial(_estimator, method=name) for name in methods.ESTIMATORS},
    },
)
