"""Hutch++, XTrace and XDiag, framework-free: trace and diagonal estimators that beat Hutchinson's
at the same number of Jacobian products whenever the Jacobian's spectrum decays.

- Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021): the trace of J on the range of a sketch
  J S exactly, Hutchinson on the rest; a third of the products each.
- XTrace and XDiag (Epperly, Tropp, Webber, SIMAX 2024): every probe both sketches the range
  and, left out of it, estimates the rest; the estimates are averaged over the probes left out.
  The leave-one-out ranges lie inside the full one, so two rounds of products suffice.

Each sample has its own Jacobian J (d x d); matrices are (batch, d, n), QR batched over the
samples. ``draw(shape)`` supplies the probes, (n, batch, d). Every result is differentiable, QR
included. A sketch wider than d spans everything, so it is capped at d. ``with_value``:
(f, estimate), f from the forward the first products run anyway; each backend :func:`bind`s ops.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from impls import methods


class Ops(NamedTuple):
    """A backend's share: J's products, its array namespace and one triangular solve."""

    # (fun, x) -> (jvps, vjps): V (batch, d, n) -> (f(x), J V), and V -> J^T V
    products: Callable
    xp: Any  # torch or jax.numpy: moveaxis, concatenate, diagonal, linalg.qr
    loo: Callable  # R (batch, s, s) upper triangular -> R^-T with unit columns


def bind(products: Callable, xp: Any, loo: Callable) -> tuple[Callable, ...]:
    """(estimate, hutchpp, xtrace, xdiag) over a backend's :class:`Ops`."""
    ops = Ops(products, xp, loo)
    return tuple(partial(fn, ops=ops) for fn in (estimate, hutchpp, xtrace, xdiag))


def estimate(method, fun, x, n_matvecs, draw, trace, *, ops: Ops):
    """(f, the trace (batch,) or, for xdiag, the diagonal (batch, d) of each sample's J)."""
    methods.check_target(method, trace)
    if methods.REGISTRY[method].trace_only:
        trace_estimator = hutchpp if method == "hutchpp" else xtrace
        return trace_estimator(fun, x, n_matvecs, draw, with_value=True, ops=ops)
    f, diag = xdiag(fun, x, n_matvecs, draw, with_value=True, ops=ops)
    return f, (diag.sum(-1) if trace else diag)


def hutchpp(fun, x, n_matvecs: int, draw, with_value: bool = False, *, ops: Ops):
    """tr(Q^T J Q) + Hutchinson on (I - QQ^T) J (I - QQ^T), Q = orth(J S): s = m/3 sketch
    probes, s range products, m - 2s residual probes (m - s probes drawn in all)."""
    jvps, _ = ops.products(fun, x)
    s = min(n_matvecs // 3, x.shape[1])
    probes = ops.xp.moveaxis(draw((n_matvecs - s, *x.shape)), 0, -1)
    sketch, rest = probes[..., :s], probes[..., s:]
    f, y = jvps(sketch)
    q, _ = ops.xp.linalg.qr(y)
    w = rest - q @ (q.mT @ rest)
    _, products = jvps(ops.xp.concatenate([q, w], -1))  # one round for both
    est = (q * products[..., :s]).sum((1, 2)) + (w * products[..., s:]).sum((1, 2)) / w.shape[-1]
    return (f, est) if with_value else est


def xtrace(fun, x, n_matvecs: int, draw, with_value: bool = False, *, ops: Ops):
    """The mean over probes i of tr(P_i J) + w_i^T (I - P_i) J (I - P_i) w_i, P_i the projector
    onto the range of J's products with every probe but i (s = m/2 probes, s range products)."""
    jvps, _ = ops.products(fun, x)
    f, omega, y, q, r, loo = _sketch(jvps, x, n_matvecs, draw, ops)
    _, z = jvps(q)  # J Q
    h = q.mT @ z  # Q^T J Q
    # P_i = Q (I - l_i l_i^T) Q^T, so (I - P_i) w_i = w_i - Q e_i and J (I - P_i) w_i = y_i - Z e_i
    e = _deflate(q.mT @ omega, loo)
    residual = (
        _diag(omega, y) - _diag(z.mT @ omega, e) - _diag(r, e) + _diag(e, h @ e)
    )  # (w_i - Q e_i)^T (y_i - Z e_i), with Q^T y_i = r_i
    kept = ops.xp.diagonal(h, 0, 1, 2).sum(-1)[:, None] - _diag(loo, h @ loo)
    est = (kept + residual).mean(-1)
    return (f, est) if with_value else est


def xdiag(fun, x, n_matvecs: int, draw, with_value: bool = False, *, ops: Ops):
    """The mean over probes i of diag(P_i J) + w_i * ((I - P_i) J w_i), P_i as in xtrace; the
    range products are VJPs, since diag(Q Q^T J) needs the rows Q^T J = (J^T Q)^T."""
    jvps, vjps = ops.products(fun, x)
    f, omega, y, q, r, loo = _sketch(jvps, x, n_matvecs, draw, ops)
    z = vjps(q)  # J^T Q
    kept = (q * z).sum(-1) - ((q @ loo) * (z @ loo)).mean(-1)
    residual = omega * (y - q @ _deflate(r, loo))  # Q^T J w_i = r_i
    est = kept + residual.mean(-1)
    return (f, est) if with_value else est


def _sketch(jvps, x, n_matvecs: int, draw, ops: Ops):
    """(f, probes W, Y = J W, Q, R = qr(Y), L): s = m/2 probes, and L's column i the unit vector
    of R^s orthogonal to every column of R but the i-th (column i of R^-T, normalised), so
    that Q (I - l_i l_i^T) Q^T projects onto the range of Y without its column i."""
    s = min(n_matvecs // 2, x.shape[1])
    omega = ops.xp.moveaxis(draw((s, *x.shape)), 0, -1)
    f, y = jvps(omega)
    q, r = ops.xp.linalg.qr(y)
    return f, omega, y, q, r, ops.loo(r)


def _deflate(c, loo):
    """Column i: c_i - l_i (l_i^T c_i), the part of c_i in the leave-i-out range."""
    return c - loo * _diag(loo, c)[..., None, :]


def _diag(a, b):
    """diag(A^T B) over the last two axes: column i of A dotted with column i of B."""
    return (a * b).sum(-2)
