"""SDEs by Fokker-Planck matching in PyTorch (the JAX ``sde`` module has the same API): the
residual on the hollow route (the transformer alone, h held fixed, or a DimwiseField's
callables) or the dense one (any field, d basis directions), training, torchsde sampling.

>>> r = fp_residual(f, g, ou_process(8), t, x, route="hollow")    # (batch,), differentiable
>>> fit(f, g, target, steps=300)                               # minimise mean r^2 (Adam)
>>> paths = sample_sde(f, g, x0, [0.0, 1.0], dt=0.01)          # (2, n, 8), Euler-Maruyama
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch.func import grad, jvp, vmap

from impls import _stiff, sde
from impls._checks import check_t_shape
from impls.sde import FitResult, Target
from impls.torch_backend.models import HollowNet
from impls.torch_backend.operators import check_finite

Tensor = torch.Tensor


def fp_residual(
    drift: Any,
    diffusion: Any,
    target: Target,
    t: Any,
    x: Tensor,
    *,
    route: str = "hollow",
    chunk_size: int | None = None,
) -> Tensor:
    """The Fokker-Planck residual of ``dx = drift dt + diag(diffusion) dW`` against ``target``
    at times ``t`` (scalar or (batch,)) and ``x`` (batch, d): (batch,). ``chunk_size`` bounds
    the dense route's memory (basis directions per vmap)."""
    t = _prepare(drift, diffusion, target, t, x, route)
    f, df = dimwise_jet(drift, t, x, sde.DRIFT_ORDER, route, chunk_size=chunk_size)
    g, dg, d2g = dimwise_jet(diffusion, t, x, sde.DIFFUSION_ORDER, route, chunk_size=chunk_size)
    return sde.residual(*target_terms(target, t, x), f, df, g, dg, d2g)


def fp_loss(drift: Any, diffusion: Any, target: Target, t: Any, x: Tensor, **opts) -> Tensor:
    """Mean squared residual over the batch, the Fokker-Planck-matching loss."""
    return fp_residual(drift, diffusion, target, t, x, **opts).square().mean()


def _prepare(drift, diffusion, target, t, x, route) -> Tensor:
    """Check the call; t as a (batch,) tensor of x's dtype and device."""
    sde.check_fields(drift, diffusion, target, route, HollowNet)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    dtype = str(x.dtype).removeprefix("torch.")
    _stiff.check_state(tuple(x.shape), dtype, target.dim, "x", "target", "sample")
    for field, name in ((drift, "drift"), (diffusion, "diffusion")):
        _check_model(field, x, name)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    check_t_shape(tuple(t.shape), x.shape[0])
    check_finite(x, "x")
    check_finite(t, "t")
    return t.reshape(-1).expand(x.shape[0]).contiguous()


def _check_model(field: Any, x: Tensor, name: str) -> None:
    if not isinstance(field, torch.nn.Module) or not hasattr(field, "spec"):
        return
    if field.spec.dtype != str(x.dtype).removeprefix("torch."):
        raise TypeError(f"x has dtype {x.dtype} but {name} is {field.spec.dtype}; cast one")
    param = next(iter(field.parameters()))
    if param.device != x.device:
        raise ValueError(f"x is on {x.device} but {name} is on {param.device}")


def dimwise_jet(
    field: Any, t: Tensor, x: Tensor, order: int, route: str, *, chunk_size: int | None = None
) -> list[Tensor]:
    """``[f, D_dim f, ..., D_dim^order f]`` at (t (batch,), x (batch, d)), each (batch, d)."""
    hollow = _hollow_jet if isinstance(field, HollowNet) else None
    return sde.jet(
        field, t, x, order, route, hollow, functools.partial(_dense_jet, chunk_size=chunk_size)
    )


def _hollow_jet(net: HollowNet, t: Tensor, x: Tensor, order: int) -> list[Tensor]:
    """One conditioner pass, then ``order`` reverse passes through the transformer alone, with
    respect to a node that feeds it only: h is held fixed, yet every result stays in the graph
    of x and all parameters (``h.detach()`` would drop the conditioner's gradient share)."""
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        h = net.conditioner(x, t)
        x_tau = x.clone() if x.requires_grad else x.detach().requires_grad_()
        out = [net.transformer(x_tau, h, t)]
        for j in range(order):
            # tau is separable in x_tau, so the gradient of the sum is the diagonal.
            (deriv,) = torch.autograd.grad(
                out[-1].sum(), x_tau, create_graph=keep_graph or j < order - 1
            )
            out.append(deriv)
    return out if keep_graph else [v.detach() for v in out]


def _dense_jet(fn, t: Tensor, x: Tensor, order: int, *, chunk_size: int | None) -> list[Tensor]:
    """The value, then nested JVPs along each basis direction e_i (vmapped), keeping component
    i: the diagonals of the Jacobian and of each output's Hessian, in d directional passes."""
    basis = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    along_x = lambda y: fn(t, y)  # noqa: E731

    def along(e: Tensor) -> tuple[Tensor, ...]:
        tangent = e.expand_as(x)
        if order == 1:
            return ((jvp(along_x, (x,), (tangent,))[1] * e).sum(-1),)
        first = lambda y: jvp(along_x, (y,), (tangent,))[1]  # noqa: E731
        d1, d2 = jvp(first, (x,), (tangent,))
        return (d1 * e).sum(-1), (d2 * e).sum(-1)

    derivs = vmap(along, chunk_size=chunk_size)(basis)  # each (d, batch)
    return [fn(t, x), *(d.T for d in derivs)]


def target_terms(
    target: Target, t: Tensor, x: Tensor, *, autodiff: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`impls.sde.target_terms` here."""
    return sde.target_terms(target, t, x, torch, _autodiff_terms, autodiff)


def _autodiff_terms(log_prob, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the batch sum are per-sample (rows are independent); the Hessian diagonal
    takes one forward-over-reverse pass per dimension."""
    sde.check_output(log_prob(t, x).shape, x.shape[:1], "log_prob")
    score_fn = grad(lambda y: log_prob(t, y).sum())
    basis = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    hess = vmap(lambda e: (jvp(score_fn, (x,), (e.expand_as(x),))[1] * e).sum(-1))(basis).T
    dt = grad(lambda s: log_prob(s, x).sum())(t)
    return dt, score_fn(x), hess


def fit(
    drift: torch.nn.Module,
    diffusion: torch.nn.Module,
    target: Target,
    *,
    steps: int = 500,
    batch: int = 256,
    lr: float = 1e-2,
    route: str = "hollow",
    seed: int = 0,
    sampler: sde.Sampler | None = None,
) -> FitResult:
    """Adam on the mean squared residual over fresh (t, x) each step: t uniform over the
    target's t_span, x from ``sampler`` (default: the target)."""
    opts = sde.FitOptions(steps, batch, lr, route, seed, sampler)
    for field, name in ((drift, "drift"), (diffusion, "diffusion")):
        if not isinstance(field, torch.nn.Module):
            raise TypeError(f"fit trains torch modules; {name} is a {type(field).__name__}")
    params = [*drift.parameters(), *diffusion.parameters()]
    optimizer = torch.optim.Adam(params, lr=opts.lr)
    like = params[0]
    losses = []
    for batch in opts.batches(target):
        t, x = (torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in batch)
        optimizer.zero_grad(set_to_none=True)
        loss = fp_loss(drift, diffusion, target, t, x, route=route)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return FitResult(drift, diffusion, torch.stack(losses).cpu().numpy())


def sample_sde(
    drift: Any,
    diffusion: Any,
    x0: Tensor,
    ts: Sequence[float],
    *,
    dt: float = 1e-2,
    seed: int = 0,
) -> Tensor:
    """Paths of ``dx = drift dt + diag(diffusion) dW`` (Itô) from ``x0`` (n, d) at ``ts``:
    (len(ts), n, d), by torchsde's Euler-Maruyama with step ``dt``, seeded by ``seed``. Fields
    are called as ``f(t, x)``, t a 0-d tensor."""
    times = sde.check_sampling(ts, dt)
    if not isinstance(x0, Tensor) or x0.ndim != 2:
        raise ValueError("x0 must be a (n, d) torch.Tensor")
    try:
        import torchsde
    except ImportError as err:
        raise ImportError("sample_sde needs torchsde: pip install 'hollowbench[sde]'") from err
    ts_tensor = torch.tensor(times, dtype=x0.dtype, device=x0.device)
    bm = torchsde.BrownianInterval(
        t0=times[0], t1=times[-1], size=tuple(x0.shape), dtype=x0.dtype, device=x0.device,
        entropy=seed,
    )  # fmt: skip
    with torch.no_grad():
        return torchsde.sdeint(_SDE(drift, diffusion), x0, ts_tensor, bm=bm, method="euler", dt=dt)


class _SDE(torch.nn.Module):
    """The interface torchsde expects: ``f`` (drift) and ``g`` (diagonal diffusion), Itô."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, drift, diffusion):
        super().__init__()
        self.drift, self.diffusion = drift, diffusion

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return self.drift(t, y)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return self.diffusion(t, y)
