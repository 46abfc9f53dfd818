"""PyTorch and JAX agree on identical weights: same spec + seed -> same f, D_dim^k, divergence."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPECS, backend_or_skip, call_opts

from impls import EXACT_METHODS, HollowSpec, flop_matched_mlp, init_params
from impls.spec import ACTIVATIONS

TOL = 1e-10


@pytest.fixture(scope="module")
def both():
    return backend_or_skip("torch"), backend_or_skip("jax")


def _run(B, spec, fn, x_np, seed=11):
    net = B.build(spec, seed=seed)
    return B.to_numpy(fn(B, net, B.asarray(x_np)))


def _agree(both, spec, fn, rng):
    x = rng.standard_normal((4, spec.dim))
    torch_out, jax_out = (_run(B, spec, fn, x) for B in both)
    assert torch_out.shape == jax_out.shape
    err = np.abs(torch_out - jax_out).max()
    assert err < TOL, f"torch vs jax differ by {err:.3g}"
    return err


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_forward_parity(both, spec_name, rng):
    spec = SPECS[spec_name]
    opts = call_opts(spec)
    _agree(both, spec, lambda B, n, x: n(opts["t"], x) if opts else n(x), rng)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_parity(both, activation, rng):
    spec = HollowSpec(dim=4, d_h=2, trans_hidden=(5,), activation=activation, dtype="float64")
    _agree(both, spec, lambda B, n, x: B.ddim(n, x, k=2, method="hollow_forward"), rng)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_ddim_parity(both, spec_name, k, rng):
    spec = SPECS[spec_name]
    opts = call_opts(spec)
    _agree(both, spec, lambda B, n, x: B.ddim(n, x, k=k, method="hollow", **opts), rng)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_divergence_parity(both, method, rng):
    spec = SPECS["made"]
    _agree(both, spec, lambda B, n, x: B.divergence(n, x, method=method), rng)


def test_mlp_parity(both, rng):
    spec = flop_matched_mlp(SPECS["masked_t"])
    _agree(both, spec, lambda B, n, x: B.divergence(n, x, method="dense_loop", t=0.2), rng)


def test_weights_identical(both):
    """Both backends hold exactly the numpy initialiser's weights."""
    spec = SPECS["made"]
    want = init_params(spec, seed=4)
    for B in both:
        net = B.build(spec, seed=4)
        for name, value in want.items():
            np.testing.assert_array_equal(B.to_numpy(net.params[name]), value)
