"""Value and tangent (Taylor mode) through a HollowNet's transformer, carried by hand.

The twin of the torch backend's ``taylor`` module, with the same names. Along x_i + s only
the first input column of tau's first layer moves, so the series of tau(x_i + s, h_i) in s
propagate in closed form: the first pre-activation is ``z = z_0 + s W0[0]``, a linear layer
maps every coefficient (the bias only the constant one), and an activation y = a(z) with
y' = g(z) z' gets ``y_m = (1/m) sum_{j=1..m} j z_j g_{m-j}``, g's own series built alongside.
For k = 1 that is the tangent ``t = a'(z) * (t_prev W)``: one extra matmul per hidden layer.

Plain array ops, so ``jax.grad`` trains through them with one ordinary reverse pass: no
nested ``grad``, no ``jvp`` and no ``jet`` in the step, and the gradients into x and every
parameter (the conditioner's share through h included) are exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Series = list[jax.Array]  # coefficients c_0, c_1, ...: the j-th derivative is j! c_j


def jet(net, x: jax.Array, h: jax.Array, t: jax.Array | None, k: int) -> Series:
    """``[tau, d tau/dx_i, ..., d^k tau/dx_i^k]`` at h held fixed, each (batch, dim)."""
    spec = net.spec
    w0 = net.params["tau0_w"]
    # Along x_i + s only the first input column moves; higher coefficients are zero and left
    # out (a series may stop short of k).
    z = [net.transformer_first(x, h, t), w0[0]]
    for j in range(1, len(spec.trans_hidden) + 1):
        y = _activation(spec.activation, net.act, z, k)
        w, b = net.params[f"tau{j}_w"], net.params[f"tau{j}_b"]
        z = [y[0] @ w + b, *(c @ w for c in y[1:])]
    out = [z[0][..., 0]]
    for m in range(1, k + 1):
        if m >= len(z):  # tau is a polynomial of lower degree in x_i
            out.append(jnp.zeros_like(x))
        else:
            out.append(jnp.broadcast_to(math.factorial(m) * z[m][..., 0], x.shape))
    return out


def ddim(net, x: jax.Array, h: jax.Array, t: jax.Array | None, k: int) -> jax.Array:
    """d^k tau_i / dx_i^k at h held fixed, shape (batch, dim)."""
    return jet(net, x, h, t, k)[k]


def _activation(name: str, act, z: Series, k: int) -> Series:
    """The series of act(z) to order k from the series z."""
    y = [act(z[0])]
    if name == "sin":  # sin' = cos, cos' = -sin
        cos, minus_y = [jnp.cos(z[0])], []
        for m in range(1, k + 1):
            y.append(_step(z, cos, m))
            minus_y.append(-y[m - 1])
            cos.append(_step(z, minus_y, m))
        return y
    if name == "softplus":  # softplus' = sigmoid
        sig = _activation("sigmoid", jax.nn.sigmoid, z, k - 1)
        return y + [_step(z, sig, m) for m in range(1, k + 1)]
    g = []  # tanh' = 1 - tanh^2, sigmoid' = sigmoid - sigmoid^2
    for m in range(1, k + 1):
        own = (1 if m == 1 else 0) if name == "tanh" else y[m - 1]
        g.append(own - _cauchy(y, y, m - 1))
        y.append(_step(z, g, m))
    return y


def _step(z: Series, g: Series, m: int) -> jax.Array:
    """The m-th coefficient of y from y' = g z': (1/m) sum_{j=1..m} j z_j g_{m-j}."""
    return sum(j * z[j] * g[m - j] for j in range(1, min(m, len(z) - 1) + 1)) / m


def _cauchy(a: Series, b: Series, n: int) -> jax.Array:
    """The n-th coefficient of the product of two series."""
    return sum(a[i] * b[n - i] for i in range(n + 1))
