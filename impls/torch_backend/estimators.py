"""Hutch++, XTrace and XDiag in PyTorch: trace and diagonal estimators that beat Hutchinson's at
the same number of Jacobian products whenever the Jacobian's spectrum decays.

- Hutch++ (Meyer, Musco, Musco, Woodruff, SOSA 2021): the trace of J on the range of a sketch
  J S exactly, Hutchinson on the rest; a third of the products each.
- XTrace and XDiag (Epperly, Tropp, Webber, SIMAX 2024): every probe both sketches the range
  and, left out of it, estimates the rest; the estimates are averaged over the probes left out.
  The leave-one-out ranges lie inside the full one, so two rounds of products suffice.

Each sample of the batch has its own Jacobian J (d x d). Its products are JVPs (J v) or VJPs
(J^T v) of the batched f, vectorised over the columns with vmap; matrices are (batch, d, n) and
the QR factorisations are batched over the samples. ``draw(shape)`` supplies the probes,
(n, batch, d). Every result is differentiable, QR included, so gradients to x and the parameters
are exact for the estimate. A sketch wider than d spans everything, so it is capped at d.
``with_value``: (f, estimate), f from the forward the first JVPs run anyway.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

from impls import _checks

Fn = Callable[[torch.Tensor], torch.Tensor]
Draw = Callable[[tuple], torch.Tensor]


def estimate(method: str, fun: Fn, x: torch.Tensor, n_matvecs: int, draw: Draw, trace: bool):
    """(f, the trace (batch,) or, for xdiag, the diagonal (batch, d) of each sample's
    Jacobian)."""
    _checks.check_target(method, trace)
    if method in _checks.TRACE_ESTIMATORS:
        trace_estimator = hutchpp if method == "hutchpp" else xtrace
        return trace_estimator(fun, x, n_matvecs, draw, with_value=True)
    f, diag = xdiag(fun, x, n_matvecs, draw, with_value=True)
    return f, (diag.sum(-1) if trace else diag)


def hutchpp(fun: Fn, x: torch.Tensor, n_matvecs: int, draw: Draw, with_value: bool = False):
    """tr(Q^T J Q) + Hutchinson on (I - QQ^T) J (I - QQ^T), Q = orth(J S): s = m/3 sketch
    probes, s range products, m - 2s residual probes (m - s probes drawn in all)."""
    s = min(n_matvecs // 3, x.shape[1])
    probes = _columns(draw((n_matvecs - s, *x.shape)))
    sketch, rest = probes[..., :s], probes[..., s:]
    f, y = _jvps(fun, x, sketch)
    q, _ = torch.linalg.qr(y)
    w = rest - q @ (q.mT @ rest)
    _, products = _jvps(fun, x, torch.cat([q, w], -1))  # one round for both
    est = (q * products[..., :s]).sum((1, 2)) + (w * products[..., s:]).sum((1, 2)) / w.shape[-1]
    return (f, est) if with_value else est


def xtrace(fun: Fn, x: torch.Tensor, n_matvecs: int, draw: Draw, with_value: bool = False):
    """The mean over probes i of tr(P_i J) + w_i^T (I - P_i) J (I - P_i) w_i, P_i the projector
    onto the range of J's products with every probe but i (s = m/2 probes, s range products)."""
    f, omega, y, q, r, loo = _sketch(fun, x, n_matvecs, draw)
    _, z = _jvps(fun, x, q)  # J Q
    h = q.mT @ z  # Q^T J Q
    # P_i = Q (I - l_i l_i^T) Q^T, so (I - P_i) w_i = w_i - Q e_i and J (I - P_i) w_i = y_i - Z e_i
    e = _deflate(q.mT @ omega, loo)
    residual = (
        _diag(omega, y) - _diag(z.mT @ omega, e) - _diag(r, e) + _diag(e, h @ e)
    )  # (w_i - Q e_i)^T (y_i - Z e_i), with Q^T y_i = r_i
    kept = h.diagonal(dim1=1, dim2=2).sum(-1, keepdim=True) - _diag(loo, h @ loo)
    est = (kept + residual).mean(-1)
    return (f, est) if with_value else est


def xdiag(fun: Fn, x: torch.Tensor, n_matvecs: int, draw: Draw, with_value: bool = False):
    """The mean over probes i of diag(P_i J) + w_i * ((I - P_i) J w_i), P_i as in xtrace; the
    range products are VJPs, since diag(Q Q^T J) needs the rows Q^T J = (J^T Q)^T."""
    f, omega, y, q, r, loo = _sketch(fun, x, n_matvecs, draw)
    z = _vjps(fun, x, q)  # J^T Q
    kept = (q * z).sum(-1) - ((q @ loo) * (z @ loo)).mean(-1)
    residual = omega * (y - q @ _deflate(r, loo))  # Q^T J w_i = r_i
    est = kept + residual.mean(-1)
    return (f, est) if with_value else est


def _sketch(fun: Fn, x: torch.Tensor, n_matvecs: int, draw: Draw):
    """(f, probes W, Y = J W, Q, R = qr(Y), L): s = m/2 probes, and L's column i the unit vector
    of R^s orthogonal to every column of R but the i-th (column i of R^-T, normalised), so
    that Q (I - l_i l_i^T) Q^T projects onto the range of Y without its column i."""
    s = min(n_matvecs // 2, x.shape[1])
    omega = _columns(draw((s, *x.shape)))
    f, y = _jvps(fun, x, omega)
    q, r = torch.linalg.qr(y)
    eye = torch.eye(s, dtype=r.dtype, device=r.device).expand_as(r)
    inv_t = torch.linalg.solve_triangular(r, eye, upper=True).mT
    return f, omega, y, q, r, inv_t / torch.linalg.vector_norm(inv_t, dim=-2, keepdim=True)


def _deflate(c: torch.Tensor, loo: torch.Tensor) -> torch.Tensor:
    """Column i: c_i - l_i (l_i^T c_i), the part of c_i in the leave-i-out range."""
    return c - loo * _diag(loo, c).unsqueeze(-2)


def _diag(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """diag(A^T B) over the last two axes: column i of A dotted with column i of B."""
    return (a * b).sum(-2)


def _columns(probes: torch.Tensor) -> torch.Tensor:
    """(n, batch, d) -> (batch, d, n): each sample's probes as a matrix's columns."""
    return probes.permute(1, 2, 0)


def _jvps(fun: Fn, x: torch.Tensor, tangents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), J V per sample), V (batch, d, n), vectorised over the n columns."""
    values, out = vmap(lambda v: jvp(fun, (x,), (v,)))(tangents.movedim(-1, 0))
    return values[0], out.movedim(0, -1)


def _vjps(fun: Fn, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """J^T V per sample, V (batch, d, n), vectorised over the n columns."""
    _, pullback = vjp(fun, x)
    (out,) = vmap(pullback)(cotangents.movedim(-1, 0))
    return out.movedim(0, -1)
