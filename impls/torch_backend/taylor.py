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
import warnings

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


# --- k = 1, written out forward and backward ---------------------------------------------------
#
# tau's activations are 64 wide over batch * dim rows: at d = 128 and batch 512 each is 16 MB.
# ``value_and_tangent`` runs :func:`jet`'s k = 1 maths as one autograd node whose backward is
# written out, with the fewest elementwise passes: forward, per hidden layer, a(z) and the
# tangent a'(z) * zt in one ``tanh_backward``-style op each; backward, a'(z) and a''(z) from the
# saved a(z) and tangent (tanh: s = 1 - y^2, zt a'' = -2 y tan). Rows run in chunks of
# :func:`chunk_rows`: with one chunk (a GPU, or a CPU where it pays) the forward keeps each
# layer's (y, tan) for the backward; with several, the backward recomputes each chunk's forward
# and takes its backward while the chunk is still in cache (one more forward's FLOPs, a fraction
# of the bytes). The JAX backend's ``value_and_tangent`` is the same algorithm.

# Rows per chunk on a CPU; None: one chunk. Chosen by measurement (bench/perf_check.py and the
# issue-26 report): on 2-core CPUs with 1-2 MB of L2 per core the recomputing chunks never paid,
# since eager dispatch and the extra forward cost more than the traffic they save.
CHUNK_ROWS: int | None = None


def chunk_rows(device: torch.device, rows: int) -> int:
    """Rows per chunk of ``rows`` on ``device``: all of them on a GPU (one launch per op; a
    chunk loop would launch thousands and torch.compile would unroll it), else CHUNK_ROWS."""
    if device.type != "cpu" or CHUNK_ROWS is None:
        return rows
    return max(1, min(CHUNK_ROWS, rows))


# Rows from which the eager node runs its forward and its backward (one chunk) as regions
# compiled by Inductor on a CPU (None: never). Op by op, the eager step took 1.16-1.48x the
# torch.compile'd step at d = 32-1024, batch 512, and 1.04-1.11x with the regions
# (reports/reference/cpu/i26): the difference is the passes over the 64-wide activations that
# Inductor fuses, not dispatch. Below this a compilation (seconds, once per shape) would not pay.
COMPILE_MIN_ROWS: int | None = 8192
_compiled: dict = {}  # plain function -> its torch.compile'd form
_eager_why: list[str] = []  # why compiling failed here; then every region runs eagerly


def _region(fn, device: torch.device, rows: int, *args):
    """``fn(*args)``, compiled where that pays: on a CPU, from COMPILE_MIN_ROWS rows, outside an
    enclosing torch.compile (which traces ``fn`` itself). Where Inductor cannot compile (no C++
    compiler, say), one warning says why and every region runs eagerly from then on."""
    if (
        COMPILE_MIN_ROWS is None
        or rows < COMPILE_MIN_ROWS
        or device.type != "cpu"
        or _eager_why
        or torch.compiler.is_compiling()
    ):
        return fn(*args)
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, fullgraph=True)
    try:
        return _compiled[fn](*args)
    except (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError) as exc:
        _eager_why.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        warnings.warn(
            "hollow_forward's k = 1 node runs eagerly: torch.compile failed here "
            f"({_eager_why[0]}); set impls.torch_backend.taylor.COMPILE_MIN_ROWS = None to "
            "skip the attempt",
            RuntimeWarning,
            stacklevel=2,
        )
        return fn(*args)


# Activations whose a' and a''/a' are functions of y = a(z): the backward needs only (y, tan).
_FROM_Y = ("tanh", "sigmoid")


def _derivs(name: str, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a'(z), a''(z)) for y = a(z)."""
    if name == "tanh":
        s = torch.ops.aten.tanh_backward(torch.ones_like(y), y)
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
    """(tau, d tau / dx_i) at h held fixed, each (batch, dim): :func:`jet` for k = 1 as one
    autograd node with a written-out backward, over chunks of :func:`chunk_rows` rows.
    Differentiable once (a train step's backward), not twice."""
    spec = net.spec
    if not spec.trans_hidden:  # an affine tau: nothing to chunk
        return tuple(jet(net, x, h, t, 1))
    batch, dim = x.shape
    weights = []
    for j in range(len(spec.trans_hidden) + 1):
        weights += [net.params[f"tau{j}_w"], net.params[f"tau{j}_b"]]
    tv = None if t is None else t.reshape(-1).expand(batch)
    per = max(1, chunk_rows(x.device, batch * dim) // batch)
    c = max(j for j in range(1, min(per, dim) + 1) if dim % j == 0)  # dims per chunk
    f, deriv = _Chunked.apply(spec.activation, net.act, c, x.T, h.transpose(0, 1), tv, *weights)
    return net.from_rows(f.reshape(-1), batch), net.from_rows(deriv.reshape(-1), batch)


def _chunk_forward(name, act, layers, hc, xc, tv, keep):
    """One chunk's rows: (f, D) and, if ``keep``, each hidden layer's saved tensors: (y, tan)
    for tanh and sigmoid, (z, y, zt) for the others. Each hidden layer's bias is added by the
    first elementwise pass over its pre-activation (addmm's would cost a pass of its own)."""
    c, batch, d_h = hc.shape
    rows = c * batch
    # tanh(z) = 2 sigmoid(2 z) - 1: on this project's CPUs torch's sigmoid kernel runs 1.4-10x
    # faster than its tanh (within an ulp of 1 of it). The hidden pre-activations come out as
    # 2 z from weights and biases times 2 (exact), so the bias is the pass's only op. (Not
    # torch.add(2 b, z, alpha=2): Inductor (torch 2.13) compiles a broadcast add with alpha
    # wrongly.)
    two = 2 if name == "tanh" else 1
    w0 = layers[0][0]
    z = torch.mm(hc.reshape(rows, d_h), two * w0[1 : 1 + d_h])
    z.addcmul_(xc.reshape(rows, 1), two * w0[0])
    if tv is not None:
        z.addcmul_(tv.repeat(c)[:, None], two * w0[1 + d_h])
    zt = w0[0]
    saved = []
    for j in range(1, len(layers)):
        z = z.add_(two * layers[j - 1][1])  # the bias of the layer that made z
        if name == "tanh":
            y = torch.sigmoid(z).mul_(2).sub_(1)
            tan = torch.ops.aten.tanh_backward(zt.expand_as(y), y)
        elif name == "sigmoid":
            y = torch.sigmoid(z)
            tan = torch.ops.aten.sigmoid_backward(zt.expand_as(y), y)
        else:
            y = act(z)
            tan = _derivs(name, z, y)[0] * zt
        if keep:
            saved.append((y, tan) if name in _FROM_Y else (z, y, zt))
        w = layers[j][0]
        last = j == len(layers) - 1
        z, zt = torch.mm(y, w if last else two * w), tan @ w
    z = z.add_(layers[-1][1])
    return z[:, 0].reshape(c, batch), zt[:, 0].reshape(c, batch), saved


def _layer_backward(name, saved, gy, gt):
    """(y, tan, g_z, g_zt) of one hidden layer from the gradients into its output y and
    tangent tan = a'(z) zt: g_zt = a' g_tan, g_z = a' g_y + a'' zt g_tan."""
    if name == "tanh":  # a' = 1 - y^2, zt a'' = -2 y tan
        y, tan = saved
        gzt = torch.ops.aten.tanh_backward(gt, y)
        gz = torch.ops.aten.tanh_backward(gy, y).addcmul_(y * tan, gt, value=-2)
        return y, tan, gz, gzt
    if name == "sigmoid":  # a' = y (1 - y), zt a'' = (1 - 2 y) tan
        y, tan = saved
        gzt = torch.ops.aten.sigmoid_backward(gt, y)
        gz = torch.ops.aten.sigmoid_backward(gy, y).addcmul_(
            torch.addcmul(tan, y, tan, value=-2), gt
        )
        return y, tan, gz, gzt
    z, y, zt = saved
    s, s2 = _derivs(name, z, y)
    return y, s * zt, torch.addcmul(gy * s, gt * zt, s2), gt * s


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, act, c, xt, hd, tv, *weights):
        layers = list(zip(weights[::2], weights[1::2], strict=True))
        dim, batch = xt.shape
        ctx.name, ctx.act, ctx.c, ctx.n_weights = name, act, c, len(weights)
        if c == dim:  # one chunk: keep what the backward needs instead of recomputing it
            f, deriv, saved = _region(
                _chunk_forward, xt.device, xt.numel(), name, act, layers, hd, xt, tv, True
            )
            ctx.save_for_backward(xt, hd, tv, *weights, *(a for s in saved for a in s))
            return f, deriv
        f = xt.new_empty(dim, batch)
        deriv = xt.new_empty(dim, batch)
        for i in range(0, dim, c):
            fc, dc, _ = _chunk_forward(name, act, layers, hd[i : i + c], xt[i : i + c], tv, False)
            f[i : i + c], deriv[i : i + c] = fc, dc
        ctx.save_for_backward(xt, hd, tv, *weights)
        return f, deriv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_f, g_deriv):
        xt, hd, tv, *rest = ctx.saved_tensors
        weights, kept = rest[: ctx.n_weights], rest[ctx.n_weights :]
        layers = list(zip(weights[::2], weights[1::2], strict=True))
        name, act, c = ctx.name, ctx.act, ctx.c
        dim = hd.shape[0]
        per = 2 if name in _FROM_Y else 3
        if c == dim:
            args = (name, act, layers, hd, xt, tv, g_f, g_deriv, (kept, per))
            return _region(_backward, xt.device, xt.numel(), *args)
        grads = [torch.zeros_like(w) for w in weights]
        g_h, g_x = torch.empty_like(hd), torch.empty_like(xt)
        g_tv = None if tv is None else torch.zeros_like(tv)
        for i in range(0, dim, c):
            sl = slice(i, i + c)
            out = _backward(name, act, layers, hd[sl], xt[sl], tv, g_f[sl], g_deriv[sl], None)
            g_x[sl], g_h[sl] = out[3], out[4]
            if tv is not None:
                g_tv.add_(out[5])
            for acc, g in zip(grads, out[6:], strict=True):
                acc.add_(g)
        return None, None, None, g_x, g_h, g_tv, *grads


def _backward(name, act, layers, hc, xc, tv, g_f, g_deriv, kept):
    """One chunk's gradients in ``_Chunked.backward``'s order: (None, None, None, g_x, g_h,
    g_tv, *weight grads). ``kept``: the forward's saved tensors, else the chunk is recomputed."""
    cc, batch, d_h = hc.shape
    rows = cc * batch
    if kept is None:
        saved = _chunk_forward(name, act, layers, hc, xc, tv, True)[2]
    else:
        flat, per = kept
        saved = [flat[i : i + per] for i in range(0, len(flat), per)]
    grads: list = [None] * (2 * len(layers))
    gz = g_f.reshape(rows, 1)
    gzt = g_deriv.reshape(rows, 1)
    for j in range(len(layers) - 1, 0, -1):
        w = layers[j][0]
        if w.shape[1] == 1:  # the output layer: an outer product, cheaper as a multiply
            gy, gt = gz * w.T, gzt * w.T
        else:
            gy, gt = gz @ w.T, gzt @ w.T
        y, tan, gz_new, gzt_new = _layer_backward(name, saved[j - 1], gy, gt)
        grads[2 * j] = torch.addmm(y.T @ gz, tan.T, gzt)
        grads[2 * j + 1] = gz.sum(0)
        gz, gzt = gz_new, gzt_new
    w0 = layers[0][0]
    hr, xr = hc.reshape(rows, d_h), xc.reshape(rows, 1)
    gw0 = torch.empty_like(w0)
    gw0[1 : 1 + d_h] = hr.T @ gz
    gw0[0] = (xr.T @ gz)[0] + gzt.sum(0)
    g_tv = None
    if tv is not None:
        tr = tv.repeat(cc)
        gw0[1 + d_h] = tr @ gz
        g_tv = (gz @ w0[1 + d_h]).reshape(cc, batch).sum(0)
    grads[0], grads[1] = gw0, gz.sum(0)
    g_h = (gz @ w0[1 : 1 + d_h].T).reshape(cc, batch, d_h)
    g_x = (gz @ w0[0]).reshape(cc, batch)
    return None, None, None, g_x, g_h, g_tv, *grads
