"""Taylor mode through a HollowNet's transformer: D_dim^k in one pass of truncated series.

PyTorch has no ``jax.experimental.jet``, and k nested JVPs cost 2^k passes. The transformer is
linear layers with an elementwise activation between them, so the Taylor series of
tau(x_i + s, h_i) in s propagate in closed form: a linear layer maps every coefficient (the
bias only the constant one), and an activation y = a(z) with y' = g(z) z' gets
``y_m = (1/m) sum_{j=1..m} j z_j g_{m-j}``, g's own series built alongside. That is O(k^2)
elementwise work and k matmuls per layer. Plain tensor ops, so gradients to x and every
parameter are exact and the pass works under CUDA graphs and torch.compile.
"""

from __future__ import annotations

import math

import torch

Series = list[torch.Tensor]  # coefficients c_0, c_1, ...: the j-th derivative is j! c_j


def ddim(net, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None, k: int) -> torch.Tensor:
    """d^k tau_i / dx_i^k at h held fixed, shape (batch, dim)."""
    spec = net.spec
    rows = net.transformer_rows(x, h, t)
    w0, b0 = net.params["tau0_w"], net.params["tau0_b"]
    # Along x_i + s only the first input column moves: z = rows @ W0 + b0 + s * W0[0], a
    # series whose higher coefficients are zero (left out: a series may stop short of k).
    z = [rows @ w0 + b0, w0[0]]
    for j in range(1, len(spec.trans_hidden) + 1):
        y = _activation(spec.activation, net.act, z, k)
        w, b = net.params[f"tau{j}_w"], net.params[f"tau{j}_b"]
        z = [y[0] @ w + b, *(c @ w for c in y[1:])]
    if k >= len(z):  # no activation: tau is affine in x_i
        return torch.zeros_like(x)
    return math.factorial(k) * z[k][..., 0]


def _activation(name: str, act, z: Series, k: int) -> Series:
    """The series of act(z) to order k from the series z."""
    y = [act(z[0])]
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
