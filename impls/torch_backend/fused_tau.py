"""tau's value and tangent in fused Triton kernels: the ``triton`` variant's k = 1 hollow_forward.

The maths is :func:`impls.torch_backend.taylor.value_and_tangent`'s (see ``_Chunked``): per
row r = (dimension i, sample b), the input ``[x_r, h_r, (t_r)]`` goes through two hidden
layers to one output; the value f and the tangent D = d tau / d x_r ride along, the tangent
starting from ``W0[0]`` (only x_r's input column moves). Here a program holds a tile of rows
and keeps every hidden activation in registers: nothing 64 wide goes through device memory.

The backward kernel recomputes its tiles' forward, then writes the gradients to the rows (x, h,
t) and its own partial sums of the weight gradients into one slot of a (programs, ...) buffer;
torch sums the slots afterwards. Two stages and no atomics: the result does not depend on the
order programs finish in. Each program walks a fixed, contiguous range of rows, so the number
of slots does not depend on the tile size the autotuner picks.

On a machine without a GPU, Triton's interpreter (``TRITON_INTERPRET=1``, set before this
module is imported: the kernels are bound to it when defined) runs the same kernels on numpy,
which is how the tests check them.

Autotuning: each kernel tries a few (BLOCK, num_warps) configurations, ``FORWARD_CONFIGS``
and ``BACKWARD_CONFIGS``, once per key :data:`TUNE_KEY`: the rows rounded up to a power of two
(``ROWS_BUCKET``: a sweep over d re-tunes once per doubling, not at every d), the activation,
t's presence, the padded widths and the matmul precision. ``HOLLOWBENCH_TRITON_CONFIGS=N``,
read when this module is imported, keeps the first N configurations of each kernel; with
``HOLLOWBENCH_TRITON_CONFIGS=1`` each kernel compiles one and times none, as the tests do
(tests/conftest.py sets it). The interpreter always runs the first one.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# libdevice's tanh does not run in the interpreter: every activation here is built from exp.
ACT_CODES = {"tanh": 0, "sigmoid": 1, "softplus": 2, "sin": 3}
HIDDEN_LAYERS = 2  # the kernels unroll exactly two hidden layers, the spec's default
SPAN = 128  # rows of a backward program's range come in multiples of this (>= every tile)
MAX_PROGRAMS_PER_SM = 4  # backward programs: enough to fill the GPU, few slots to sum

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CONFIGS_ENV = "HOLLOWBENCH_TRITON_CONFIGS"  # keep the first N configurations (see above)

# (BLOCK rows, num_warps), best guess first. Every hidden value of a tile lives in registers,
# so a configuration must keep BLOCK * 64 floats per tensor (and the 64 x 64 weights and, in
# the backward, their gradient sums) within 255 registers a thread. ptxas (sm_90, triton 3.8,
# the default 64-wide layers, d_h 16) reports for the forward at full float32 precision no
# spills at 16 x 2, 16 x 4 and 32 x 8 warps, but 300 to 6000 bytes at 32 x 4 and at every
# 64- and 128-row tile (with TF32 none of these spill). The backward spills at every size
# tried: least at 16 rows on 8 warps (36 bytes; 1600 on 4 warps, 740 at 32 rows on 8), and
# 2.3 to 2.7 KB at every size under TF32, whose dot layouts hold more (fixing that needs a
# backward that holds fewer 64 x 64 values at once). Three forward and two backward
# configurations keep tuning cheap: each is compiled and timed once per key.
FORWARD_CONFIGS = ((16, 4), (32, 8), (16, 2))
BACKWARD_CONFIGS = ((16, 8), (32, 8))
# What a tuned choice depends on. ROWS_BUCKET is the rows' next power of two (the kernels do
# not read it); PREC is the dots' input precision. Triton adds the tensors' dtypes itself.
TUNE_KEY = ("ROWS_BUCKET", "TIMED", "ACT", "PH", "P1", "P2", "PREC")


def _configs(choices: tuple[tuple[int, int], ...]) -> list[triton.Config]:
    """The autotuner's configurations: all of ``choices``, the first N under
    HOLLOWBENCH_TRITON_CONFIGS=N, and only the first in the interpreter, whose autotuner fails
    with more than one ("0 active drivers") and where speed does not matter."""
    keep = os.environ.get(CONFIGS_ENV, "")
    if not (keep == "" or (keep.isdigit() and int(keep) >= 1)):
        raise ValueError(f"{CONFIGS_ENV} must be a whole number >= 1 or unset, got {keep!r}")
    n = 1 if _INTERPRET else int(keep or len(choices))
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in choices[:n]]


def tune_key(sizes: dict) -> tuple:
    """The values of TUNE_KEY among a launch's arguments (:func:`_shape`'s), which the
    autotuner keys its choice on."""
    return tuple(sizes[name] for name in TUNE_KEY)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _act(z, ACT: tl.constexpr):
    """(a(z), a'(z), a''(z)) of the activation numbered ACT in ACT_CODES."""
    if ACT == 0:  # tanh = 2 sigmoid(2z) - 1
        y = 2.0 * _sigmoid(2.0 * z) - 1.0
        s = 1.0 - y * y
        s2 = -2.0 * y * s
    elif ACT == 1:
        y = _sigmoid(z)
        s = y * (1.0 - y)
        s2 = s * (1.0 - 2.0 * y)
    elif ACT == 2:  # softplus, the models' stable form max(z, 0) + log(1 + exp(-|z|))
        y = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
        s = _sigmoid(z)
        s2 = s * (1.0 - s)
    else:
        y = tl.sin(z)
        s = tl.cos(z)
        s2 = -y
    return y, s, s2


@triton.jit
def _load_matrix(ptr, n_rows, n_cols, R: tl.constexpr, C: tl.constexpr):
    """A row-major (n_rows, n_cols) matrix as an (R, C) block, zero-padded."""
    i = tl.arange(0, R)[:, None]
    j = tl.arange(0, C)[None, :]
    return tl.load(ptr + i * n_cols + j, mask=(i < n_rows) & (j < n_cols), other=0.0)


@triton.jit
def _load_vector(ptr, n, C: tl.constexpr):
    j = tl.arange(0, C)
    return tl.load(ptr + j, mask=j < n, other=0.0)


@triton.jit
def _tile_forward(
    x_ptr, h_ptr, t_ptr, rows, batch, r, d_h, n1, n2, w0, b0, w1, b1, w2,
    TIMED: tl.constexpr, ACT: tl.constexpr, PH: tl.constexpr, P1: tl.constexpr,
    P2: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One tile's rows ``r`` (BLOCK,) through tau: the inputs and every hidden layer's
    (y, tangent, a', a'') in registers. The widths d_h, n1, n2 are padded to PH, P1, P2."""
    live = r < rows
    x = tl.load(x_ptr + r, mask=live, other=0.0)
    k = tl.arange(0, PH)[None, :]
    h = tl.load(h_ptr + r[:, None] * d_h + k, mask=live[:, None] & (k < d_h), other=0.0)
    w0x = _load_vector(w0, n1, P1)  # W0[0]: x's input row, and the first tangent
    w0h = _load_matrix(w0 + n1, d_h, n1, PH, P1)
    z1 = tl.dot(h, w0h, input_precision=PREC) + x[:, None] * w0x[None, :] + b0[None, :]
    t = x * 0.0
    if TIMED:
        t = tl.load(t_ptr + r % batch, mask=live, other=0.0)
        w0t = _load_vector(w0 + (1 + d_h) * n1, n1, P1)
        z1 += t[:, None] * w0t[None, :]
    y1, s1, ss1 = _act(z1, ACT)
    tan1 = s1 * w0x[None, :]
    z2 = tl.dot(y1, w1, input_precision=PREC) + b1[None, :]
    zt2 = tl.dot(tan1, w1, input_precision=PREC)
    y2, s2, ss2 = _act(z2, ACT)
    tan2 = s2 * zt2
    f = tl.sum(y2 * w2[None, :], axis=1)
    deriv = tl.sum(tan2 * w2[None, :], axis=1)
    return x, h, t, w0x, w0h, y1, s1, ss1, tan1, zt2, y2, s2, ss2, tan2, f, deriv


@triton.autotune(configs=_configs(FORWARD_CONFIGS), key=list(TUNE_KEY))
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _forward_kernel(
    x_ptr, h_ptr, t_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, f_ptr, d_ptr,
    rows, batch, d_h, n1, n2, ROWS_BUCKET,
    TIMED: tl.constexpr, ACT: tl.constexpr, PH: tl.constexpr, P1: tl.constexpr,
    P2: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """f and D, each (rows,), for the tile of BLOCK rows this program holds."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b0 = _load_vector(b0_ptr, n1, P1)
    w1 = _load_matrix(w1_ptr, n1, n2, P1, P2)
    b1 = _load_vector(b1_ptr, n2, P2)
    w2 = _load_vector(w2_ptr, n2, P2)  # W2 is (n2, 1): its column is contiguous
    # Only f and D leave; the compiler drops the rest.
    _x, _h, _t, _wx, _wh, _y1, _s1, _a1, _u1, _zt2, _y2, _s2, _a2, _u2, f, deriv = _tile_forward(
        x_ptr, h_ptr, t_ptr, rows, batch, r, d_h, n1, n2, w0_ptr, b0, w1, b1, w2,
        TIMED, ACT, PH, P1, P2, PREC,
    )  # fmt: skip
    live = r < rows
    tl.store(f_ptr + r, f + tl.load(b2_ptr), mask=live)
    tl.store(d_ptr + r, deriv, mask=live)


@triton.autotune(configs=_configs(BACKWARD_CONFIGS), key=list(TUNE_KEY))
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _backward_kernel(
    x_ptr, h_ptr, t_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, w2_ptr, gf_ptr, gd_ptr,
    gx_ptr, gh_ptr, gt_ptr, pw0_ptr, pb0_ptr, pw1_ptr, pb1_ptr, pw2_ptr, pb2_ptr,
    rows, batch, d_h, n1, n2, ROWS_BUCKET, d_in, span,
    TIMED: tl.constexpr, ACT: tl.constexpr, PH: tl.constexpr, P1: tl.constexpr,
    P2: tl.constexpr, PREC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Gradients of sum(g_f f + g_D D) over rows [pid * span, (pid + 1) * span): to each row's
    x, h, t (written per row), and to the weights, summed over the range into this program's
    slot of the partial buffers (d_in = 1 + d_h + TIMED rows of W0, its bias, W1, b1, W2, b2)."""
    pid = tl.program_id(0)
    b0 = _load_vector(b0_ptr, n1, P1)
    w1 = _load_matrix(w1_ptr, n1, n2, P1, P2)
    b1 = _load_vector(b1_ptr, n2, P2)
    w2 = _load_vector(w2_ptr, n2, P2)
    acc_w0x = tl.zeros((P1,), tl.float32)
    acc_w0h = tl.zeros((PH, P1), tl.float32)
    acc_w0t = tl.zeros((P1,), tl.float32)
    acc_b0 = tl.zeros((P1,), tl.float32)
    acc_w1 = tl.zeros((P1, P2), tl.float32)
    acc_b1 = tl.zeros((P2,), tl.float32)
    acc_w2 = tl.zeros((P2,), tl.float32)
    acc_b2 = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, span, BLOCK):
        r = pid * span + start + tl.arange(0, BLOCK)
        x, h, t, w0x, w0h, y1, s1, ss1, tan1, zt2, y2, s2, ss2, tan2, _f, _d = _tile_forward(
            x_ptr, h_ptr, t_ptr, rows, batch, r, d_h, n1, n2, w0_ptr, b0, w1, b1, w2,
            TIMED, ACT, PH, P1, P2, PREC,
        )  # fmt: skip
        live = r < rows  # dead rows get zero cotangents, so they add nothing below
        g_f = tl.load(gf_ptr + r, mask=live, other=0.0)
        g_d = tl.load(gd_ptr + r, mask=live, other=0.0)
        # Output layer: f = y2 W2 + b2, D = tan2 W2.
        acc_w2 += tl.sum(y2 * g_f[:, None] + tan2 * g_d[:, None], axis=0)
        acc_b2 += g_f
        gy2 = g_f[:, None] * w2[None, :]
        gt2 = g_d[:, None] * w2[None, :]
        # Second activation: y2 = a(z2), tan2 = a'(z2) zt2.
        gz2 = gy2 * s2 + gt2 * zt2 * ss2
        gzt2 = gt2 * s2
        # Second layer: z2 = y1 W1 + b1, zt2 = tan1 W1.
        acc_w1 += tl.dot(tl.trans(y1), gz2, input_precision=PREC)
        acc_w1 += tl.dot(tl.trans(tan1), gzt2, input_precision=PREC)
        acc_b1 += tl.sum(gz2, axis=0)
        gy1 = tl.dot(gz2, tl.trans(w1), input_precision=PREC)
        gt1 = tl.dot(gzt2, tl.trans(w1), input_precision=PREC)
        # First activation: y1 = a(z1), tan1 = a'(z1) W0[0].
        gz1 = gy1 * s1 + gt1 * w0x[None, :] * ss1
        # First layer: z1 = x W0[0] + h W0[1:1+d_h] + t W0[1+d_h] + b0, and tan1's W0[0].
        acc_w0x += tl.sum(x[:, None] * gz1 + gt1 * s1, axis=0)
        acc_w0h += tl.dot(tl.trans(h), gz1, input_precision=PREC)
        acc_b0 += tl.sum(gz1, axis=0)
        k = tl.arange(0, PH)[None, :]
        g_h = tl.dot(gz1, tl.trans(w0h), input_precision=PREC)
        tl.store(gh_ptr + r[:, None] * d_h + k, g_h, mask=live[:, None] & (k < d_h))
        tl.store(gx_ptr + r, tl.sum(gz1 * w0x[None, :], axis=1), mask=live)
        if TIMED:
            w0t = _load_vector(w0_ptr + (1 + d_h) * n1, n1, P1)
            acc_w0t += tl.sum(t[:, None] * gz1, axis=0)
            tl.store(gt_ptr + r, tl.sum(gz1 * w0t[None, :], axis=1), mask=live)
    # This program's slot of each partial buffer; W0's d_in rows are x's, h's (d_h), then t's.
    j1 = tl.arange(0, P1)
    pw0 = pw0_ptr + pid * d_in * n1
    tl.store(pw0 + j1, acc_w0x, mask=j1 < n1)
    tl.store(pw0 + n1 + tl.arange(0, PH)[:, None] * n1 + j1[None, :], acc_w0h,
             mask=(tl.arange(0, PH)[:, None] < d_h) & (j1[None, :] < n1))  # fmt: skip
    if TIMED:
        tl.store(pw0 + (1 + d_h) * n1 + j1, acc_w0t, mask=j1 < n1)
    tl.store(pb0_ptr + pid * n1 + j1, acc_b0, mask=j1 < n1)
    j2 = tl.arange(0, P2)
    tl.store(pw1_ptr + pid * n1 * n2 + j1[:, None] * n2 + j2[None, :], acc_w1,
             mask=(j1[:, None] < n1) & (j2[None, :] < n2))  # fmt: skip
    tl.store(pb1_ptr + pid * n2 + j2, acc_b1, mask=j2 < n2)
    tl.store(pw2_ptr + pid * n2 + j2, acc_w2, mask=j2 < n2)
    tl.store(pb2_ptr + pid, tl.sum(acc_b2, axis=0))


def value_and_tangent(
    net, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, d tau / dx_i) at h held fixed, each (batch, dim), from the fused kernels: the
    signature and result of :func:`impls.torch_backend.taylor.value_and_tangent`. x is
    (batch, dim), h (batch, dim, d_h), t None or a scalar / (batch,) / (batch, 1) tensor.
    Differentiable once (a train step's backward), not twice."""
    spec = net.spec
    _check(spec, x)
    batch = x.shape[0]
    # Rows dimension-major, as the transformer's: row i * batch + b is sample b's dimension i.
    x_rows = x.T.reshape(-1)
    h_rows = h.transpose(0, 1).reshape(-1, spec.d_h)
    t_batch = None if t is None else t.reshape(-1).expand(batch).contiguous()
    weights = [net.params[f"tau{j}_{p}"] for j in range(HIDDEN_LAYERS + 1) for p in ("w", "b")]
    f, deriv = _FusedTau.apply(spec.activation, x_rows, h_rows, t_batch, *weights)
    return net.from_rows(f, batch), net.from_rows(deriv, batch)


def _check(spec, x: torch.Tensor) -> None:
    """Raise ValueError naming what the kernels do not support."""
    if spec.activation not in ACT_CODES:
        raise ValueError(f"fused tau: activation {spec.activation!r} is not supported")
    if len(spec.trans_hidden) != HIDDEN_LAYERS:
        raise ValueError(
            f"fused tau supports exactly {HIDDEN_LAYERS} hidden layers in the transformer, "
            f"got trans_hidden={spec.trans_hidden}"
        )
    if x.dtype != torch.float32:
        raise ValueError(f"fused tau runs in float32 only, got {x.dtype}")
    if not (x.is_cuda or _INTERPRET):
        raise ValueError(
            f"fused tau needs a CUDA device (or TRITON_INTERPRET=1, for tests), got {x.device}"
        )


def _shape(act: str, rows: int, batch: int, d_h: int, w1: torch.Tensor, timed: bool) -> dict:
    """The kernels' size arguments and constexprs, the widths padded to powers of two of at
    least 16 (tl.arange needs a power of two, tl.dot 16 or more: a layer 1 wide, or d_h = 1,
    runs as a 16-wide dot on zero padding, which the masked loads and stores never see)."""

    def pad(n: int) -> int:
        return max(16, triton.next_power_of_2(n))

    n1, n2 = w1.shape
    # Full float32 products unless torch itself allows TF32 (--bench-matmul-precision).
    prec = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return dict(
        rows=rows, batch=batch, d_h=d_h, n1=n1, n2=n2,
        ROWS_BUCKET=triton.next_power_of_2(max(rows, 1)), TIMED=timed, ACT=ACT_CODES[act],
        PH=pad(d_h), P1=pad(n1), P2=pad(n2), PREC=prec,
    )  # fmt: skip


class _FusedTau(torch.autograd.Function):
    @staticmethod
    def forward(ctx, act, x_rows, h_rows, t_batch, w0, b0, w1, b1, w2, b2):
        rows, d_h = h_rows.shape
        batch = rows if t_batch is None else t_batch.shape[0]
        x_rows, h_rows = x_rows.contiguous(), h_rows.contiguous()
        w0, w1 = w0.contiguous(), w1.contiguous()
        f, deriv = x_rows.new_empty(rows), x_rows.new_empty(rows)
        sizes = _shape(act, rows, batch, d_h, w1, t_batch is not None)
        t_arg = x_rows if t_batch is None else t_batch  # unread when not TIMED

        def grid(meta):
            return (triton.cdiv(rows, meta["BLOCK"]),)

        _forward_kernel[grid](x_rows, h_rows, t_arg, w0, b0, w1, b1, w2, b2, f, deriv, **sizes)
        ctx.sizes = sizes
        ctx.save_for_backward(x_rows, h_rows, t_batch, w0, b0, w1, b1, w2)
        return f, deriv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_f, g_deriv):
        x_rows, h_rows, t_batch, w0, b0, w1, b1, w2 = ctx.saved_tensors
        sizes = ctx.sizes
        rows, (n1, n2) = sizes["rows"], w1.shape
        programs, span = _programs(rows, x_rows.device)
        g_x, g_h = torch.empty_like(x_rows), torch.empty_like(h_rows)
        g_t = torch.empty_like(x_rows) if t_batch is not None else None
        new = x_rows.new_empty
        partial = [new(programs, *w0.shape), new(programs, n1), new(programs, n1, n2)]
        partial += [new(programs, n2), new(programs, n2), new(programs, 1)]
        t_arg = x_rows if t_batch is None else t_batch
        _backward_kernel[(programs,)](
            x_rows, h_rows, t_arg, w0, b0, w1, b1, w2,
            g_f.contiguous(), g_deriv.contiguous(), g_x, g_h, x_rows if g_t is None else g_t,
            *partial, d_in=w0.shape[0], span=span, **sizes,
        )  # fmt: skip
        grads = [p.sum(0) for p in partial]
        grads[4] = grads[4][:, None]  # W2 is (n2, 1)
        if g_t is not None:  # each sample's t feeds one row per dimension
            g_t = g_t.view(-1, t_batch.shape[0]).sum(0)
        return None, g_x, g_h, g_t, *grads


def _programs(rows: int, device: torch.device) -> tuple[int, int]:
    """(backward programs, rows each): a few per streaming multiprocessor, each over a range
    of rows that is a multiple of SPAN, so that every tile size the autotuner tries splits
    it evenly and every program's slot gets written."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        most = MAX_PROGRAMS_PER_SM * sms
    else:  # the interpreter runs programs one after another: a handful is enough
        most = 4
    spans = triton.cdiv(rows, SPAN)
    programs = min(most, spans)
    span = triton.cdiv(spans, programs) * SPAN
    return triton.cdiv(rows, span), span
