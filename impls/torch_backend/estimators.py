"""Hutch++, XTrace and XDiag (:mod:`impls._estimators`) in PyTorch: J's products are JVPs and
VJPs of the batched f, vectorised over the columns with vmap."""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from impls import _estimators


def _products(fun, x: torch.Tensor):
    def jvps(tangents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, out = vmap(lambda v: jvp(fun, (x,), (v,)))(tangents.movedim(-1, 0))
        return values[0], out.movedim(0, -1)

    def vjps(cotangents: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(fun, x)
        (out,) = vmap(pullback)(cotangents.movedim(-1, 0))
        return out.movedim(0, -1)

    return jvps, vjps


def _loo(r: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device).expand_as(r)
    inv_t = torch.linalg.solve_triangular(r, eye, upper=True).mT
    return inv_t / torch.linalg.vector_norm(inv_t, dim=-2, keepdim=True)


estimate, hutchpp, xtrace, xdiag = _estimators.bind(_products, torch, _loo)
