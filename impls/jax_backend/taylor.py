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


# --- k = 1 in cache-sized chunks ---------------------------------------------------------------
#
# tau's activations are 64 wide over batch * dim rows: at d = 128 and batch 512 each is 16 MB,
# and autodiff of the step above streams a dozen of them through memory per layer. On a CPU
# that traffic, not the matmuls, is the cost. ``value_and_tangent`` runs the same maths over
# chunks of ``CHUNK_ROWS`` rows, and its custom VJP recomputes each chunk's forward and takes
# its backward while the chunk is still in cache: one more forward's FLOPs, a fraction of the
# bytes. (On a GPU the same role falls to a fused kernel.)

CHUNK_ROWS = 4096

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


def value_and_tangent(
    net, x: jax.Array, h: jax.Array, t: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(tau, d tau / dx_i) at h held fixed, each (batch, dim): :func:`jet` for k = 1, run in
    cache-sized chunks of rows with a backward that recomputes each chunk."""
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
    per = max(1, CHUNK_ROWS // batch)
    c = max(j for j in range(1, min(per, dim) + 1) if dim % j == 0)  # dims per chunk
    hd = jnp.swapaxes(h, 0, 1)  # (dim, batch, d_h): tau's row order
    f, deriv = _chunked(spec.activation, c, t is not None, layers, hd, x.T, tv)
    return net.from_rows(f), net.from_rows(deriv)


def _chunk_forward(act_name, act, has_t, layers, hc, xc, tv, keep):
    """One chunk's rows: (f, D) and, if ``keep``, each hidden layer's (y, t, s, s2, zt)."""
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
        s, s2 = _DERIVS[act_name](z, y)
        tan = s * zt
        if keep:
            saved.append((y, tan, s, s2, zt))
        z, zt = y @ w + b, tan @ w
    return z[:, 0].reshape(c, batch), zt[:, 0].reshape(c, batch), saved


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

    def one(args):
        hc, xc = args
        f, deriv, _ = _chunk_forward(act_name, act, has_t, layers, hc, xc, tv, keep=False)
        return f, deriv

    f, deriv = jax.lax.map(one, (_chunks(hd, c), _chunks(xt, c)))
    dim, batch = xt.shape
    return (f.reshape(dim, batch), deriv.reshape(dim, batch)), (layers, hd, xt, tv)


def _chunked_bwd(act_name, c, has_t, residuals, cotangents):
    layers, hd, xt, tv = residuals
    gf_all, gd_all = cotangents
    act = _act(act_name)
    d_h = hd.shape[-1]

    def one(carry, args):
        grads, g_tv = carry
        hc, xc, gfc, gdc = args
        cc, batch = xc.shape
        rows = cc * batch
        _, _, saved = _chunk_forward(act_name, act, has_t, layers, hc, xc, tv, keep=True)
        gz, gzt = gfc.reshape(rows, 1), gdc.reshape(rows, 1)
        new = list(grads)
        for j in range(len(layers) - 1, 0, -1):
            y, tan, s, s2, zt = saved[j - 1]
            w, _ = layers[j]
            gw, gb = new[j]
            new[j] = (gw + y.T @ gz + tan.T @ gzt, gb + gz.sum(0))
            gy, gt = gz @ w.T, gzt @ w.T
            gz, gzt = gy * s + gt * zt * s2, gt * s
        w0, _ = layers[0]
        hr, xr = hc.reshape(rows, d_h), xc.reshape(rows, 1)
        gw0, gb0 = new[0]
        gw0 = gw0.at[1 : 1 + d_h].add(hr.T @ gz)
        gw0 = gw0.at[0].add((xr.T @ gz)[0] + gzt.sum(0))
        if has_t:
            gw0 = gw0.at[1 + d_h].add(jnp.tile(tv, cc) @ gz)
            g_tv = g_tv + (gz @ w0[1 + d_h]).reshape(cc, batch).sum(0)
        new[0] = (gw0, gb0 + gz.sum(0))
        g_h = (gz @ w0[1 : 1 + d_h].T).reshape(cc, batch, d_h)
        g_x = (gz @ w0[0]).reshape(cc, batch)
        return (tuple(new), g_tv), (g_h, g_x)

    zeros = tuple((jnp.zeros_like(w), jnp.zeros_like(b)) for w, b in layers)
    xs = (_chunks(hd, c), _chunks(xt, c), _chunks(gf_all, c), _chunks(gd_all, c))
    (grads, g_tv), (g_h, g_x) = jax.lax.scan(one, (zeros, jnp.zeros_like(tv)), xs)
    return grads, g_h.reshape(hd.shape), g_x.reshape(xt.shape), g_tv


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
