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

from impls import _taylor

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
    out = [net.from_rows(z[0][:, 0], batch)]
    for m in range(1, k + 1):
        if m >= len(z):  # tau is a polynomial of lower degree in x_i
            out.append(torch.zeros_like(x))
        else:
            out.append(net.from_rows((math.factorial(m) * z[m][..., 0]).expand(batch * dim), batch))
    return out


def ddim(net, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None, k: int) -> torch.Tensor:
    """d^k tau_i / dx_i^k at h held fixed, shape (batch, dim)."""
    return jet(net, x, h, t, k)[k]


def _activation(name: str, act, z: Series, k: int) -> Series:
    """The series of act(z) to order k from the series z (impls._taylor's recurrence)."""
    if k == 1 and name in _TANGENT and len(z) > 1:
        y0 = act(z[0])
        return [y0, _TANGENT[name](z[1].expand_as(y0), y0)]
    sigmoid_series = lambda z, k: _activation("sigmoid", torch.sigmoid, z, k)  # noqa: E731
    return _taylor.activation(name, act, z, k, torch.cos, sigmoid_series)


# --- k = 1 in cache-sized chunks ---------------------------------------------------------------
#
# tau's activations are 64 wide over batch * dim rows: at d = 128 and batch 512 each is 16 MB,
# and autograd of the step above streams a dozen of them through memory per layer. On a CPU
# that traffic, not the matmuls, is the cost. ``value_and_tangent`` runs the same maths over
# chunks of ``CHUNK_ROWS`` rows, and its backward recomputes each chunk's forward and takes its
# backward while the chunk is still in cache: one more forward's FLOPs, a fraction of the
# bytes. The JAX backend's ``value_and_tangent`` is the same algorithm.

CHUNK_ROWS = 4096


def _tanh(z: torch.Tensor) -> torch.Tensor:
    """tanh(z) as 2 sigmoid(2z) - 1: on this project's CPUs torch's sigmoid kernel runs about
    10x faster than its tanh, and the chunks below take no gradient through it (their backward
    is written out). Within a unit in the last place of 1 of torch.tanh."""
    return torch.sigmoid(2 * z).mul_(2).sub_(1)


def _derivs(name: str, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a'(z), a''(z)) for y = a(z)."""
    if name == "tanh":
        s = torch.addcmul(torch.ones_like(y), y, y, value=-1)
        return s, -2 * y * s
    if name == "sigmoid":
        s = torch.ops.aten.sigmoid_backward(torch.ones_like(y), y)
        return s, s * (1 - 2 * y)
    if name == "softplus":
        sig = torch.sigmoid(z)
        return sig, sig * (1 - sig)
    return torch.cos(z), -y  # sin


def value_and_tangent(
    net, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, d tau / dx_i) at h held fixed, each (batch, dim): :func:`jet` for k = 1, run in
    cache-sized chunks of rows with a backward that recomputes each chunk. Differentiable
    once (a train step's backward), not twice."""
    spec = net.spec
    if not spec.trans_hidden:  # an affine tau: nothing to chunk
        return tuple(jet(net, x, h, t, 1))
    batch, dim = x.shape
    weights = []
    for j in range(len(spec.trans_hidden) + 1):
        weights += [net.params[f"tau{j}_w"], net.params[f"tau{j}_b"]]
    tv = None if t is None else t.reshape(-1).expand(batch)
    per = max(1, CHUNK_ROWS // batch)
    c = max(j for j in range(1, min(per, dim) + 1) if dim % j == 0)  # dims per chunk
    f, deriv = _Chunked.apply(spec.activation, net.act, c, x.T, h.transpose(0, 1), tv, *weights)
    return net.from_rows(f.reshape(-1), batch), net.from_rows(deriv.reshape(-1), batch)


def _chunk_forward(name, act, layers, hc, xc, tv, keep):
    """One chunk's rows: (f, D) and, if ``keep``, each hidden layer's (y, t, s, s2, zt)."""
    c, batch, d_h = hc.shape
    rows = c * batch
    w0, b0 = layers[0]
    z = torch.addmm(b0, hc.reshape(rows, d_h), w0[1 : 1 + d_h])
    z = torch.addcmul(z, xc.reshape(rows, 1), w0[0])
    if tv is not None:
        z = torch.addcmul(z, tv.repeat(c)[:, None], w0[1 + d_h])
    zt = w0[0]
    saved = []
    for w, b in layers[1:]:
        y = _tanh(z) if name == "tanh" else act(z)
        s, s2 = _derivs(name, z, y)
        tan = s * zt
        if keep:
            saved.append((y, tan, s, s2, zt))
        z, zt = torch.addmm(b, y, w), tan @ w
    return z[:, 0].reshape(c, batch), zt[:, 0].reshape(c, batch), saved


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, act, c, xt, hd, tv, *weights):
        layers = list(zip(weights[::2], weights[1::2], strict=True))
        dim, batch = xt.shape
        f = xt.new_empty(dim, batch)
        deriv = xt.new_empty(dim, batch)
        for i in range(0, dim, c):
            fc, dc, _ = _chunk_forward(name, act, layers, hd[i : i + c], xt[i : i + c], tv, False)
            f[i : i + c], deriv[i : i + c] = fc, dc
        ctx.name, ctx.act, ctx.c = name, act, c
        ctx.save_for_backward(xt, hd, tv, *weights)
        return f, deriv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_f, g_deriv):
        xt, hd, tv, *weights = ctx.saved_tensors
        layers = list(zip(weights[::2], weights[1::2], strict=True))
        name, act, c = ctx.name, ctx.act, ctx.c
        dim, batch, d_h = hd.shape
        grads = [torch.zeros_like(w) for w in weights]
        g_h, g_x = torch.empty_like(hd), torch.empty_like(xt)
        g_tv = None if tv is None else torch.zeros_like(tv)
        w0 = layers[0][0]
        for i in range(0, dim, c):
            hc, xc = hd[i : i + c], xt[i : i + c]
            cc = hc.shape[0]
            rows = cc * batch
            _, _, saved = _chunk_forward(name, act, layers, hc, xc, tv, True)
            gz = g_f[i : i + c].reshape(rows, 1)
            gzt = g_deriv[i : i + c].reshape(rows, 1)
            for j in range(len(layers) - 1, 0, -1):
                y, tan, s, s2, zt = saved[j - 1]
                w = layers[j][0]
                grads[2 * j].addmm_(y.T, gz).addmm_(tan.T, gzt)
                grads[2 * j + 1].add_(gz.sum(0))
                gy, gt = gz @ w.T, gzt @ w.T
                gz = torch.addcmul(gy * s, gt * zt, s2)
                gzt = gt * s
            hr, xr = hc.reshape(rows, d_h), xc.reshape(rows, 1)
            grads[0][1 : 1 + d_h].addmm_(hr.T, gz)
            grads[0][0].add_((xr.T @ gz)[0] + gzt.sum(0))
            if tv is not None:
                tr = tv.repeat(cc)
                grads[0][1 + d_h].add_(tr @ gz)
                g_tv.add_((gz @ w0[1 + d_h]).reshape(cc, batch).sum(0))
            grads[1].add_(gz.sum(0))
            g_h[i : i + c] = (gz @ w0[1 : 1 + d_h].T).reshape(cc, batch, d_h)
            g_x[i : i + c] = (gz @ w0[0]).reshape(cc, batch)
        return None, None, None, g_x, g_h, g_tv, *grads
