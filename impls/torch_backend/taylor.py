"""Value and tangent (Taylor mode) through a HollowNet's transformer, carried by hand.

Along x_i + s only the first input column of tau's first layer moves, so the series of
tau(x_i + s, h_i) in s propagate in closed form: the first layer's pre-activation is
``z = z_0 + s W0[0]``, a linear layer maps every coefficient (the bias only the constant one),
and an activation y = a(z) with y' = g(z) z' gets ``y_m = (1/m) sum_{j=1..m} j z_j g_{m-j}``,
g's own series built alongside. For k = 1 that is the tangent ``t = a'(z) * (t_prev W)``: one
extra matmul per hidden layer, no reverse pass. O(k^2) elementwise work and k matmuls per
layer in general.

These are plain tensor ops: there is no nested ``autograd.grad`` and no dual tensor, so one
ordinary reverse pass trains through them, exactly, into x and every parameter (the
conditioner's share through h included, since nothing is detached), and the pass runs under
CUDA graphs and torch.compile. PyTorch has no ``jax.experimental.jet``, and k nested JVPs
would cost 2^k passes. The JAX backend's ``taylor`` module is the same code.
"""

from __future__ import annotations

import math

import torch

Series = list[torch.Tensor]  # coefficients c_0, c_1, ...: the j-th derivative is j! c_j

# Fused y' * z' for the k = 1 tangent, y = act(z) (differentiable: autograd has their rules).
_TANGENT = {
    "tanh": torch.ops.aten.tanh_backward,
    "sigmoid": torch.ops.aten.sigmoid_backward,
}


def jet(net, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None, k: int) -> Series:
    """``[tau, d tau/dx_i, ..., d^k tau/dx_i^k]`` at h held fixed, each (batch, dim)."""
    spec = net.spec
    batch, dim = x.shape
    w0 = net.params["tau0_w"]
    # Along x_i + s only the first input column moves; higher coefficients are zero and left
    # out (a series may stop short of k).
    z = [net.transformer_first(x, h, t), w0[0]]
    for j in range(1, len(spec.trans_hidden) + 1):
        y = _activation(spec.activation, net.act, z, k)
        w, b = net.params[f"tau{j}_w"], net.params[f"tau{j}_b"]
        z = [torch.addmm(b, y[0], w), *(c @ w for c in y[1:])]
    out = [z[0][:, 0].view(batch, dim)]
    for m in range(1, k + 1):
        if m >= len(z):  # tau is a polynomial of lower degree in x_i
            out.append(torch.zeros_like(x))
        else:
            out.append((math.factorial(m) * z[m][..., 0]).expand(batch * dim).view(batch, dim))
    return out


def ddim(net, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None, k: int) -> torch.Tensor:
    """d^k tau_i / dx_i^k at h held fixed, shape (batch, dim)."""
    return jet(net, x, h, t, k)[k]


def _activation(name: str, act, z: Series, k: int) -> Series:
    """The series of act(z) to order k from the series z."""
    y = [act(z[0])]
    if k == 1 and name in _TANGENT and len(z) > 1:
        return [y[0], _TANGENT[name](z[1].expand_as(y[0]), y[0])]
    if name == "sin":  # sin' = cos, cos' = -sin
        cos, minus_y = [torch.cos(z[0])], []
        for m in range(1, k + 1):
            y.append(_step(z, cos, m))
            minus_y.append(-y[m - 1])
            cos.append(_step(z, minus_y, m))
        return y
    if name == "softplus":  # softplus' = sigmoid
        sig = _activation("sigmoid", torch.sigmoid, z, k - 1)
        return y + [_step(z, sig, m) for m in range(1, k + 1)]
    g = []  # tanh' = 1 - tanh^2, sigmoid' = sigmoid - sigmoid^2
    for m in range(1, k + 1):
        own = (1 if m == 1 else 0) if name == "tanh" else y[m - 1]
        g.append(own - _cauchy(y, y, m - 1))
        y.append(_step(z, g, m))
    return y


def _step(z: Series, g: Series, m: int) -> torch.Tensor:
    """The m-th coefficient of y from y' = g z': (1/m) sum_{j=1..m} j z_j g_{m-j}."""
    return sum(j * z[j] * g[m - j] for j in range(1, min(m, len(z) - 1) + 1)) / m


def _cauchy(a: Series, b: Series, n: int) -> torch.Tensor:
    """The n-th coefficient of the product of two series."""
    return sum(a[i] * b[n - i] for i in range(n + 1))
