"""Hutch++, XTrace and XDiag in JAX: trace and diagonal estimators that beat Hutchinson's at the
same number of Jacobian products whenever the Jacobian's spectrum decays.

- Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021): the trace of J on the range of a sketch
  J S exactly, Hutchinson on the rest; a third of the products each.
- XTrace and XDiag (Epperly, Tropp, Webber, SIMAX 2024): every probe both sketches the range
  and, left out of it, estimates the rest; the estimates are averaged over the probes left out.
  The leave-one-out ranges lie inside the full one, so two rounds of products suffice.

Each sample of the batch has its own Jacobian J (d x d). Its products are JVPs (J v) of one
``jax.linearize`` of the batched f, or VJPs (J^T v) of its transpose, vectorised over the
columns with vmap; matrices are (batch, d, n) and the QR factorisations are batched over the
samples. ``draw(shape)`` supplies the probes, (n, batch, d). Every result is differentiable, QR
included, so gradients to x and the parameters are exact for the estimate. A sketch wider than
d spans everything, so it is capped at d. ``with_value``: (f, estimate), f from the
linearisation's forward.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from impls import _checks

Fn = Callable[[jax.Array], jax.Array]
Draw = Callable[[tuple], jax.Array]


def estimate(method: str, fun: Fn, x: jax.Array, n_matvecs: int, draw: Draw, trace: bool):
    """(f, the trace (batch,) or, for xdiag, the diagonal (batch, d) of each sample's
    Jacobian)."""
    _checks.check_target(method, trace)
    if method in _checks.TRACE_ESTIMATORS:
        trace_estimator = hutchpp if method == "hutchpp" else xtrace
        return trace_estimator(fun, x, n_matvecs, draw, with_value=True)
    f, diag = xdiag(fun, x, n_matvecs, draw, with_value=True)
    return f, (diag.sum(-1) if trace else diag)


def hutchpp(fun: Fn, x: jax.Array, n_matvecs: int, draw: Draw, with_value: bool = False):
    """tr(Q^T J Q) + Hutchinson on (I - QQ^T) J (I - QQ^T), Q = orth(J S): s = m/3 sketch
    probes, s range products, m - 2s residual probes (m - s probes drawn in all)."""
    s = min(n_matvecs // 3, x.shape[1])
    f, lin = jax.linearize(fun, x)
    probes = _columns(draw((n_matvecs - s, *x.shape)))
    sketch, rest = probes[..., :s], probes[..., s:]
    q, _ = jnp.linalg.qr(_apply(lin, sketch))
    w = rest - q @ (q.mT @ rest)
    products = _apply(lin, jnp.concatenate([q, w], -1))  # one round for both
    est = (q * products[..., :s]).sum((1, 2)) + (w * products[..., s:]).sum((1, 2)) / w.shape[-1]
    return (f, est) if with_value else est


def xtrace(fun: Fn, x: jax.Array, n_matvecs: int, draw: Draw, with_value: bool = False):
    """The mean over probes i of tr(P_i J) + w_i^T (I - P_i) J (I - P_i) w_i, P_i the projector
    onto the range of J's products with every probe but i (s = m/2 probes, s range products).

    On XLA:CPU (jaxlib 0.10.2), the jitted estimate at d = 128 and 48 products can deadlock on
    its second call, idle, in the runtime; the whole process's later calls then wait too.
    ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` avoids it."""
    f, lin = jax.linearize(fun, x)
    omega, y, q, r, loo = _sketch(lin, x, n_matvecs, draw)
    z = _apply(lin, q)  # J Q
    h = q.mT @ z  # Q^T J Q
    # P_i = Q (I - l_i l_i^T) Q^T, so (I - P_i) w_i = w_i - Q e_i and J (I - P_i) w_i = y_i - Z e_i
    e = _deflate(q.mT @ omega, loo)
    residual = (
        _diag(omega, y) - _diag(z.mT @ omega, e) - _diag(r, e) + _diag(e, h @ e)
    )  # (w_i - Q e_i)^T (y_i - Z e_i), with Q^T y_i = r_i
    kept = jnp.trace(h, axis1=1, axis2=2)[:, None] - _diag(loo, h @ loo)
    est = (kept + residual).mean(-1)
    return (f, est) if with_value else est


def xdiag(fun: Fn, x: jax.Array, n_matvecs: int, draw: Draw, with_value: bool = False):
    """The mean over probes i of diag(P_i J) + w_i * ((I - P_i) J w_i), P_i as in xtrace; the
    range products are VJPs, since diag(Q Q^T J) needs the rows Q^T J = (J^T Q)^T."""
    f, lin = jax.linearize(fun, x)
    omega, y, q, r, loo = _sketch(lin, x, n_matvecs, draw)
    transposed = jax.linear_transpose(lin, x)
    z = _apply(lambda v: transposed(v)[0], q)  # J^T Q
    kept = (q * z).sum(-1) - ((q @ loo) * (z @ loo)).mean(-1)
    residual = omega * (y - q @ _deflate(r, loo))  # Q^T J w_i = r_i
    est = kept + residual.mean(-1)
    return (f, est) if with_value else est


def _sketch(lin: Fn, x: jax.Array, n_matvecs: int, draw: Draw):
    """(probes W, Y = J W, Q, R = qr(Y), L): s = m/2 probes, and L's column i the unit vector
    of R^s orthogonal to every column of R but the i-th (column i of R^-T, normalised), so
    that Q (I - l_i l_i^T) Q^T projects onto the range of Y without its column i."""
    s = min(n_matvecs // 2, x.shape[1])
    omega = _columns(draw((s, *x.shape)))
    y = _apply(lin, omega)
    q, r = jnp.linalg.qr(y)
    eye = jnp.broadcast_to(jnp.eye(s, dtype=r.dtype), r.shape)
    inv_t = jax.scipy.linalg.solve_triangular(r, eye, lower=False).mT
    return omega, y, q, r, inv_t / jnp.linalg.norm(inv_t, axis=-2, keepdims=True)


def _deflate(c: jax.Array, loo: jax.Array) -> jax.Array:
    """Column i: c_i - l_i (l_i^T c_i), the part of c_i in the leave-i-out range."""
    return c - loo * _diag(loo, c)[..., None, :]


def _diag(a: jax.Array, b: jax.Array) -> jax.Array:
    """diag(A^T B) over the last two axes: column i of A dotted with column i of B."""
    return (a * b).sum(-2)


def _columns(probes: jax.Array) -> jax.Array:
    """(n, batch, d) -> (batch, d, n): each sample's probes as a matrix's columns."""
    return probes.transpose(1, 2, 0)


def _apply(linear: Fn, columns: jax.Array) -> jax.Array:
    """A linear map of the batch applied to each column of (batch, d, n), vectorised."""
    return jax.vmap(linear, in_axes=-1, out_axes=-1)(columns)
