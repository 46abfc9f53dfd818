"""Continuous normalizing flows in PyTorch with torchdiffeq's ``odeint`` / ``odeint_adjoint``
(the JAX ``cnf`` module has the same API). The ``field`` is a time-dependent model of this
backend (a HollowNet for method "hollow") or any callable ``f(t, x)`` on (batch, d) tensors.
NFE are counted (``NFE_KIND``): ``nfe_forward`` the solve's evaluations of the dynamics,
``nfe_backward`` their VJPs in ``backward()`` (an autograd hook on their output).

>>> loss, stats = nll(net, x, FlowConfig(method="hutchinson")); loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from impls import cnf
from impls.cnf import DEFAULT_CONFIG, STOCHASTIC_TRACES, FlowConfig, TrainResult
from impls.torch_backend import operators
from impls.torch_backend.models import HollowNet

SOLVERS = ("dopri5",)
NFE_KIND = "counted"  # both NFE figures count real calls
Tensor = torch.Tensor


class _CountVJP(torch.autograd.Function):
    """Identity on the dynamics' output whose backward counts one VJP of the dynamics."""

    @staticmethod
    def forward(ctx, stats: dict, dx: Tensor, dlogp: Tensor) -> tuple[Tensor, Tensor]:
        ctx.stats = stats
        return dx.view_as(dx), dlogp.view_as(dlogp)

    @staticmethod
    def backward(ctx, grad_dx: Tensor, grad_dlogp: Tensor):
        ctx.stats["nfe_backward"] += 1
        return None, grad_dx, grad_dlogp


class Dynamics(nn.Module):
    """``d/dt [x, a] = [f(t, x), -div f(t, x)]`` on the state ``(x (batch, d), a (batch,))``;
    probes come from ``seed`` at every evaluation: one draw per solve, as in FFJORD."""

    def __init__(self, field: Callable, config: FlowConfig, seed: int, stats: dict):
        super().__init__()
        self.field = field  # a Module registers as a child: odeint_adjoint finds its params
        self.config, self.seed, self.stats = config, seed, stats
        self.calls = 0  # the adjoint solve calls it too: nfe_forward is read after the solve

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.calls += 1
        dx, div = _value_and_divergence(self.field, state[0], t, self.config, self.seed)
        dlogp = -div
        if torch.is_grad_enabled():
            return _CountVJP.apply(self.stats, dx, dlogp)
        return dx, dlogp


def _is_model(field: Any) -> bool:
    return isinstance(field, nn.Module) and hasattr(field, "spec")


def _value_and_divergence(
    field: Callable, x: Tensor, t: Tensor, config: FlowConfig, seed: int
) -> tuple[Tensor, Tensor]:
    """(f(t, x), div f(t, x)) from one pass of the field: the divergence's own forward."""
    method = config.method
    probes = {**config.probe_opts, "seed": seed} if method in STOCHASTIC_TRACES else {}
    if _is_model(field):
        opts = {"t": t} if field.spec.time_dependent else {}
        return operators.value_and_divergence(field, x, method, **opts, **probes)
    # A plain callable: the same operator code, on f(t, .)
    fun = lambda y: field(t, y)  # noqa: E731
    if method in STOCHASTIC_TRACES:
        return operators.stochastic(fun, x, method, probes, trace=True)
    if method == "dense_loop":
        f, diag = operators.dense_loop(fun, x, 1, with_value=True)
    else:
        f, diag = operators.dense_vectorized(fun, x, 1, None, with_value=True)
    return f, diag.sum(-1)


def _check(field: Any, x: Any, config: FlowConfig, seed: Any, name: str = "x") -> None:
    cnf.check_flow(field, config, seed, isinstance(field, HollowNet))
    if config.solver not in SOLVERS:
        raise ValueError(
            f"solver {config.solver!r} is not available in torchdiffeq here; "
            f"available: {', '.join(SOLVERS)}"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    dtype, spec = str(x.dtype).removeprefix("torch."), field.spec if _is_model(field) else None
    cnf.check_rows(name, tuple(x.shape), dtype, x.is_floating_point(), spec)
    operators.check_finite(x, name)


def _integrate(
    field: Callable, y0: Tensor, t0: float, t1: float, config: FlowConfig, seed: int
) -> tuple[Tensor, Tensor, dict]:
    """Solve from ``t0`` to ``t1``; (y(t1), a(t1), stats)."""
    stats = {"nfe_forward": 0, "nfe_backward": 0}
    dynamics = Dynamics(field, config, seed, stats)
    ts = torch.tensor([t0, t1], dtype=y0.dtype, device=y0.device)
    solve = odeint_adjoint if config.adjoint else odeint
    ys, acc = solve(
        dynamics,
        (y0, y0.new_zeros(y0.shape[0])),
        ts,
        rtol=config.rtol,
        atol=config.atol,
        method=config.solver,
        options={"max_num_steps": config.max_steps},
    )
    stats["nfe_forward"] = dynamics.calls
    return ys[-1], acc[-1], stats


def encode(
    field: Callable, x: Tensor, config: FlowConfig = DEFAULT_CONFIG, *, seed: int = 0
) -> tuple[Tensor, Tensor, dict]:
    """x -> z = x(t1): (z, delta_logp, stats), with ``log p(x) = log N(z) - delta_logp``."""
    _check(field, x, config, seed)
    return _integrate(field, x, 0.0, config.t1, config, seed)


def decode(
    field: Callable, z: Tensor, config: FlowConfig = DEFAULT_CONFIG, *, seed: int = 0
) -> tuple[Tensor, Tensor, dict]:
    """z -> x = x(0), integrating back from t1: (x, delta_logp, stats), with the same
    ``log p(x) = log N(z) - delta_logp``."""
    _check(field, z, config, seed, name="z")
    x, acc, stats = _integrate(field, z, config.t1, 0.0, config, seed)
    return x, -acc, stats


def log_likelihood(
    field: Callable, x: Tensor, config: FlowConfig = DEFAULT_CONFIG, *, seed: int = 0
) -> tuple[Tensor, dict]:
    """log p(x) in model space, (batch,), and the solve's stats."""
    z, delta_logp, stats = encode(field, x, config, seed=seed)
    return cnf.standard_normal_logpdf(z) - delta_logp, stats


def nll(
    field: Callable, x: Tensor, config: FlowConfig = DEFAULT_CONFIG, *, seed: int = 0
) -> tuple[Tensor, dict]:
    """The training loss: mean negative log-likelihood of the batch (nats, model space)."""
    logp, stats = log_likelihood(field, x, config, seed=seed)
    return -logp.mean(), stats


def sample(
    net: nn.Module, n: int, config: FlowConfig = DEFAULT_CONFIG, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """n samples of a built model's flow: z ~ N(0, I) from ``seed``, decoded; (x, log p(x))."""
    if not _is_model(net):
        raise TypeError("sample needs a model built by this backend; decode any z instead")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    param = next(net.parameters())
    gen = torch.Generator(device=param.device).manual_seed(cnf.check_seed(seed))
    z = torch.randn(n, net.spec.dim, generator=gen, dtype=param.dtype, device=param.device)
    x, delta_logp, _ = decode(net, z, config, seed=seed)
    return x, cnf.standard_normal_logpdf(z) - delta_logp


def held_out_log_likelihood(
    field: nn.Module,
    data: np.ndarray,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    seed: int = 0,
    batch: int = 512,
) -> np.ndarray:
    """Model-space log p of every row of ``data`` (n, d), in batches without gradients; batch
    i draws its probes from ``probe_seed(seed, i)``."""
    param = next(field.parameters())
    data = cnf.check_data(data, field.spec.dim)
    cnf.check_seed(seed)
    out = []
    with torch.no_grad():
        for i, start in enumerate(range(0, len(data), batch)):
            x = torch.as_tensor(data[start : start + batch], dtype=param.dtype, device=param.device)
            logp, _ = log_likelihood(field, x, config, seed=cnf.probe_seed(seed, i))
            out.append(logp.double().cpu().numpy())
    return np.concatenate(out)


def train(
    field: nn.Module,
    data: np.ndarray,
    config: FlowConfig = DEFAULT_CONFIG,
    *,
    steps: int | None = None,
    budget_s: float | None = None,
    batch: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> TrainResult:
    """Adam on the mean NLL of minibatches of ``data`` (model space), in place, until ``steps``
    iterations or ``budget_s`` wall seconds; batches and probes follow ``seed``."""
    opts = cnf.TrainOptions(steps, budget_s, batch, lr, seed)
    source = opts.batches(data, field.spec.dim)
    param = next(field.parameters())
    optimizer = torch.optim.Adam(field.parameters(), lr=opts.lr)

    def iteration(i: int) -> tuple[Tensor, dict]:
        x = torch.as_tensor(next(source), dtype=param.dtype, device=param.device)
        optimizer.zero_grad(set_to_none=True)
        loss, stats = nll(field, x, config, seed=cnf.probe_seed(opts.seed, i))
        loss.backward()
        optimizer.step()
        return loss.detach(), stats

    return opts.run(field, iteration)
