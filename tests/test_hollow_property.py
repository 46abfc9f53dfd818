"""The conditioner is hollow: h_i never depends on x_i, for both kinds, in both backends."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import SPECS, call_opts

from impls import HollowSpec


def _conditioner_jacobian(B, net, x, t=None) -> np.ndarray:
    """dh/dx per sample, shape (batch, d, d_h, d)."""
    if B.name == "torch":
        import torch
        from torch.func import jacrev, vmap

        tt = None if t is None else torch.as_tensor(t, dtype=x.dtype)
        return vmap(jacrev(lambda r: net.conditioner(r[None], tt)[0]))(x).detach().numpy()
    import equinox as eqx
    import jax

    # jit: eager, vmap(jacrev) dispatches op by op and takes seconds
    jac = eqx.filter_jit(
        lambda n, y: jax.vmap(jax.jacrev(lambda r: n.conditioner(r[None], t)[0]))(y)
    )
    return np.asarray(jac(net, x))


def _blocks(jac: np.ndarray):
    """(diagonal blocks dh_i/dx_i, off-diagonal blocks dh_i/dx_j for j != i)."""
    d = jac.shape[1]
    diag = jac[:, np.arange(d), :, np.arange(d)]
    off = jac * (1 - np.eye(d))[None, :, None, :]
    return diag, off


@pytest.mark.parametrize(
    "spec",
    [
        *SPECS.values(),
        HollowSpec(dim=6, conditioner="made", cond_hidden=(2, 2), d_h=2, dtype="float64"),
        HollowSpec(dim=1, d_h=2, dtype="float64"),
    ],
    ids=lambda s: f"{s.conditioner}-d{s.dim}-t{int(s.time_dependent)}",
)
def test_conditioner_is_hollow(backend, spec, rng):
    net = backend.build(spec, seed=1)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    diag, off = _blocks(_conditioner_jacobian(backend, net, x, call_opts(spec).get("t")))
    assert np.all(diag == 0)
    if spec.dim > 1:  # and it is not trivially hollow: h_i sees every other x_j
        reach = np.abs(off).max(axis=(0, 2)) + np.eye(spec.dim)
        assert np.all(reach > 0)


def test_masked_conditioner_hollow_for_any_weights(backend, rng):
    """Even with x_i -> h_i weights set non-zero (say, by a user's optimiser), h_i ignores x_i."""
    spec = SPECS["masked"]
    net = backend.build(spec, seed=1)
    w = backend.to_numpy(net.params["cond0_w"]).copy()
    w[np.arange(spec.dim), np.arange(spec.dim)] = rng.standard_normal((spec.dim, w.shape[2]))
    if backend.name == "torch":
        import torch

        with torch.no_grad():
            net.params["cond0_w"].copy_(torch.as_tensor(w))
    else:
        net = dataclasses.replace(net, params={**net.params, "cond0_w": backend.asarray(w)})
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    diag, _ = _blocks(_conditioner_jacobian(backend, net, x))
    assert np.abs(diag).max() < 1e-14
