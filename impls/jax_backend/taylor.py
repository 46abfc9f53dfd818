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

import functools
import math

import jax
import jax.numpy as jnp

from impls import _taylor

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
    out = [net.from_rows(z[0][..., 0])]
    for m in range(1, k + 1):
        if m >= len(z):  # tau is a polynomial of lower degree in x_i
            out.append(jnp.zeros_like(x))
        else:
            rows = jnp.broadcast_to(math.factorial(m) * z[m][..., 0], z[0].shape[:-1])
            out.append(net.from_rows(rows))
    return out


def ddim(net, x: jax.Array, h: jax.Array, t: jax.Array | None, k: int) -> jax.Array:
    """d^k tau_i / dx_i^k at h held fixed, shape (batch, dim)."""
    return jet(net, x, h, t, k)[k]


def _activation(name: str, act, z: Series, k: int) -> Series:
    """The series of act(z) to order k from the series z (impls._taylor's recurrence)."""
    sigmoid_series = lambda z, k: _activation("sigmoid", jax.nn.sigmoid, z, k)  # noqa: E731
    return _taylor.activation(name, act, z, k, jnp.cos, sigmoid_series)


# --- k = 1, written out forward and backward ---------------------------------------------------
#
# The torch backend's ``value_and_tangent``, the same algorithm: one custom VJP whose backward
# gets a'(z) and a''(z) from the saved a(z) and tangent (tanh: s = 1 - y^2, zt a'' = -2 y tan)
# and whose weight gradients are plain 2-D GEMMs over rows (rows x features). Rows run in
# chunks of :func:`chunk_rows`: with one chunk (a GPU, or a CPU where it pays) the forward
# keeps each layer's (y, tan) as residuals; with several, the forward is a ``lax.map`` over the
# chunks and the backward a ``lax.scan`` that recomputes each chunk (remat by hand) and takes
# its backward while it is still in cache.

# Rows per chunk on a CPU; None: one chunk. Chosen by measurement (the issue-26 report): on
# 2-core CPUs with 1-2 MB of L2 per core the recomputing chunks did not pay.
CHUNK_ROWS: int | None = None

# y = a(z) and its first two derivatives s = a'(z), s2 = a''(z), from z (and y).
_DERIVS = {
    "tanh": lambda z, y: (1 - y * y, -2 * y * (1 - y * y)),
    "sigmoid": lambda z, y: (y * (1 - y), y * (1 - y) * (1 - 2 * y)),
    "softplus": lambda z, y: (
        jax.nn.sigmoid(z),
        jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z)),
    ),
    "sin": lambda z, y: (jnp.cos(z), -y),
}
# Activations whose a' and zt a'' are functions of y = a(z) and tan = a'(z) zt: the backward
# needs only (y, tan): (a', zt a'') from them.
_FROM_Y = {
    "tanh": lambda y, tan: (1 - y * y, -2 * y * tan),
    "sigmoid": lambda y, tan: (y * (1 - y), (1 - 2 * y) * tan),
}


def chunk_rows(x: jax.Array, rows: int) -> int:
    """Rows per chunk of ``rows``: all of them off a CPU (a loop of chunks on a GPU launches
    thousands of kernels), else CHUNK_ROWS. The platform is x's, or under a trace the default
    backend's."""
    if isinstance(x, jax.core.Tracer):
        on_cpu = jax.default_backend() == "cpu"
    else:
        on_cpu = all(d.platform == "cpu" for d in x.devices())
    if not on_cpu or CHUNK_ROWS is None:
        return rows
    return max(1, min(CHUNK_ROWS, rows))


def value_and_tangent(
    net, x: jax.Array, h: jax.Array, t: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(tau, d tau / dx_i) at h held fixed, each (batch, dim): :func:`jet` for k = 1 as one
    custom VJP, over chunks of :func:`chunk_rows` rows."""
    spec = net.spec
    if not spec.trans_hidden:  # an affine tau: nothing to chunk
        return tuple(jet(net, x, h, t, 1))
    n = len(spec.trans_hidden) + 1
    layers = tuple((net.params[f"tau{j}_w"], net.params[f"tau{j}_b"]) for j in range(n))
    batch, dim = x.shape
    tv = (
        jnp.zeros((batch,), x.dtype)
        if t is None
        else jnp.broadcast_to(jnp.reshape(t, (-1,)), (batch,))
    )
    per = max(1, chunk_rows(x, batch * dim) // batch)
    c = max(j for j in range(1, min(per, dim) + 1) if dim % j == 0)  # dims per chunk
    hd = jnp.swapaxes(h, 0, 1)  # (dim, batch, d_h): tau's row order
    f, deriv = _chunked(spec.activation, c, t is not None, layers, hd, x.T, tv)
    return net.from_rows(f), net.from_rows(deriv)


def _chunk_forward(act_name, act, has_t, layers, hc, xc, tv, keep):
    """One chunk's rows: (f, D) and, if ``keep``, each hidden layer's saved values: (y, tan)
    for tanh and sigmoid, (z, y, zt) for the others."""
    c, batch, d_h = hc.shape
    rows = c * batch
    w0, b0 = layers[0]
    z = hc.reshape(rows, d_h) @ w0[1 : 1 + d_h] + xc.reshape(rows, 1) * w0[0] + b0
    if has_t:
        z = z + jnp.tile(tv, c)[:, None] * w0[1 + d_h]
    zt = w0[0]
    saved = []
    for w, b in layers[1:]:
        y = act(z)
        if act_name in _FROM_Y:
            tan = (1 - y * y if act_name == "tanh" else y * (1 - y)) * zt
            saved.append((y, tan))
        else:
            tan = _DERIVS[act_name](z, y)[0] * zt
            saved.append((z, y, zt))
        z, zt = y @ w + b, tan @ w
    return z[:, 0].reshape(c, batch), zt[:, 0].reshape(c, batch), (saved if keep else [])


def _chunk_backward(act_name, has_t, layers, saved, hc, xc, tv, gfc, gdc):
    """One chunk's (weight grads as layers' pairs, g_tv, g_h, g_x) from its saved values."""
    cc, batch, d_h = hc.shape
    rows = cc * batch
    gz, gzt = gfc.reshape(rows, 1), gdc.reshape(rows, 1)
    grads = [None] * len(layers)
    for j in range(len(layers) - 1, 0, -1):
        w, _ = layers[j]
        if act_name in _FROM_Y:
            y, tan = saved[j - 1]
            s, zt_s2 = _FROM_Y[act_name](y, tan)
        else:
            z, y, zt = saved[j - 1]
            s, s2 = _DERIVS[act_name](z, y)
            tan, zt_s2 = s * zt, zt * s2
        grads[j] = (y.T @ gz + tan.T @ gzt, gz.sum(0))
        gy, gt = gz @ w.T, gzt @ w.T
        gz, gzt = s * gy + zt_s2 * gt, s * gt
    w0, _ = layers[0]
    hr, xr = hc.reshape(rows, d_h), xc.reshape(rows, 1)
    gw0 = jnp.zeros_like(w0)
    gw0 = gw0.at[1 : 1 + d_h].set(hr.T @ gz)
    gw0 = gw0.at[0].set((xr.T @ gz)[0] + gzt.sum(0))
    g_tv = jnp.zeros_like(tv)
    if has_t:
        gw0 = gw0.at[1 + d_h].set(jnp.tile(tv, cc) @ gz)
        g_tv = (gz @ w0[1 + d_h]).reshape(cc, batch).sum(0)
    grads[0] = (gw0, gz.sum(0))
    g_h = (gz @ w0[1 : 1 + d_h].T).reshape(cc, batch, d_h)
    g_x = (gz @ w0[0]).reshape(cc, batch)
    return tuple(grads), g_tv, g_h, g_x


def _chunks(a, c):
    return a.reshape(a.shape[0] // c, c, *a.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunked(act_name, c, has_t, layers, hd, xt, tv):
    return _chunked_fwd(act_name, c, has_t, layers, hd, xt, tv)[0]


def _act(act_name):
    from impls.jax_backend.models import ACTIVATIONS

    return ACTIVATIONS[act_name]


def _chunked_fwd(act_name, c, has_t, layers, hd, xt, tv):
    act = _act(act_name)
    dim, batch = xt.shape
    if c == dim:  # one chunk: keep the saved values as residuals instead of recomputing
        f, deriv, saved = _chunk_forward(act_name, act, has_t, layers, hd, xt, tv, keep=True)
        return (f, deriv), (layers, hd, xt, tv, saved)

    def one(args):
        hc, xc = args
        f, deriv, _ = _chunk_forward(act_name, act, has_t, layers, hc, xc, tv, keep=False)
        return f, deriv

    f, deriv = jax.lax.map(one, (_chunks(hd, c), _chunks(xt, c)))
    return (f.reshape(dim, batch), deriv.reshape(dim, batch)), (layers, hd, xt, tv, None)


def _chunked_bwd(act_name, c, has_t, residuals, cotangents):
    layers, hd, xt, tv, saved = residuals
    gf_all, gd_all = cotangents
    if saved is not None:
        grads, g_tv, g_h, g_x = _chunk_backward(
            act_name, has_t, layers, saved, hd, xt, tv, gf_all, gd_all
        )
        return grads, g_h, g_x, g_tv
    act = _act(act_name)

    def one(carry, args):
        grads, g_tv = carry
        hc, xc, gfc, gdc = args
        _, _, kept = _chunk_forward(act_name, act, has_t, layers, hc, xc, tv, keep=True)
        new, gtv, g_h, g_x = _chunk_backward(act_name, has_t, layers, kept, hc, xc, tv, gfc, gdc)
        grads = jax.tree.map(jnp.add, grads, new)
        return (grads, g_tv + gtv), (g_h, g_x)

    zeros = tuple((jnp.zeros_like(w), jnp.zeros_like(b)) for w, b in layers)
    xs = (_chunks(hd, c), _chunks(xt, c), _chunks(gf_all, c), _chunks(gd_all, c))
    (grads, g_tv), (g_h, g_x) = jax.lax.scan(one, (zeros, jnp.zeros_like(tv)), xs)
    return grads, g_h.reshape(hd.shape), g_x.reshape(xt.shape), g_tv


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
