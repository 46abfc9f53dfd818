"""Every exact method equals an independent full-Jacobian/Hessian reference, in float64."""

from __future__ import annotations

import numpy as np
import pytest
from _reference import reference_ddim
from conftest import SPECS, call_opts

from impls import EXACT_METHODS, HollowSpec, MLPSpec, param_matched_mlp

TOL = 1e-10
DENSE_METHODS = ("dense_loop", "dense_vectorized")


def _ddim_error(B, spec, method, k, rng, batch=3):
    net = B.build(spec, seed=3)
    x = B.asarray(rng.standard_normal((batch, spec.dim)))
    opts = call_opts(spec)
    got = B.to_numpy(B.ddim(net, x, k=k, method=method, **opts))
    want = B.to_numpy(reference_ddim(B, net, x, k, opts.get("t")))
    assert got.shape == (batch, spec.dim)
    return np.abs(got - want).max(), np.abs(want).max()


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("method", EXACT_METHODS)
def test_exact_methods_match_reference(backend, spec_name, method, k, rng):
    err, scale = _ddim_error(backend, SPECS[spec_name], method, k, rng)
    assert scale > 1e-3  # the reference is not trivially zero
    assert err < TOL, f"{backend.name} {method} k={k}: max error {err:.3g}"


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_fourth_order(backend, method, rng):
    spec = HollowSpec(dim=3, d_h=2, cond_hidden=(), trans_hidden=(5,), dtype="float64")
    err, scale = _ddim_error(backend, spec, method, 4, rng, batch=2)
    assert scale > 1e-3
    assert err < TOL


@pytest.mark.parametrize("method", (*DENSE_METHODS, "hutchinson"))
def test_dense_methods_accept_mlps(backend, method, rng):
    spec = param_matched_mlp(SPECS["masked"])
    net = backend.build(spec)
    x = backend.asarray(rng.standard_normal((4, spec.dim)))
    trace = backend.to_numpy(reference_ddim(backend, net, x, 1)).sum(-1)
    got = backend.to_numpy(
        backend.divergence(net, x, method=method, n_probes=1, seed=0)
        if method == "hutchinson"
        else backend.divergence(net, x, method=method)
    )
    assert got.shape == (4,)
    if method != "hutchinson":
        assert np.abs(got - trace).max() < TOL
    if method in DENSE_METHODS:
        err = np.abs(
            backend.to_numpy(backend.ddim(net, x, k=2, method=method))
            - backend.to_numpy(reference_ddim(backend, net, x, 2))
        ).max()
        assert err < TOL


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_divergence_is_trace(backend, method, rng):
    spec = SPECS["masked_t"]
    net = backend.build(spec, seed=5)
    x = backend.asarray(rng.standard_normal((6, spec.dim)))
    t = rng.standard_normal(6)  # a time per sample
    got = backend.to_numpy(backend.divergence(net, x, method=method, t=backend.asarray(t)))
    at_zero = backend.to_numpy(reference_ddim(backend, net, x, 1, 0.0)).sum(-1)
    assert got.shape == (6,)
    per_sample = [
        backend.to_numpy(reference_ddim(backend, net, x[i : i + 1], 1, float(t[i]))).sum()
        for i in range(6)
    ]
    assert np.abs(got - np.array(per_sample)).max() < TOL
    assert not np.allclose(got, at_zero)  # t really enters


def test_chunked_dense_vectorized(backend, rng):
    spec = SPECS["masked"]
    net = backend.build(spec)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    full = backend.to_numpy(backend.ddim(net, x, k=2, method="dense_vectorized"))
    chunked = backend.to_numpy(backend.ddim(net, x, k=2, method="dense_vectorized", chunk_size=2))
    assert np.abs(full - chunked).max() < TOL


def test_jax_jit_matches_eager(rng):
    jax = pytest.importorskip("jax")
    from conftest import backend_or_skip

    B = backend_or_skip("jax")
    spec = SPECS["made"]
    net = B.build(spec)
    x = B.asarray(rng.standard_normal((3, spec.dim)))
    for method in EXACT_METHODS:
        eager = B.ddim(net, x, k=2, method=method)
        jitted = jax.jit(lambda n, y, m=method: B.ddim(n, y, k=2, method=m))(net, x)
        assert np.abs(np.asarray(eager) - np.asarray(jitted)).max() < TOL


def test_float32_models_run(backend, rng):
    spec = HollowSpec(dim=6)
    net = backend.build(spec)
    x = backend.asarray(rng.standard_normal((2, 6)).astype(np.float32))
    for method in EXACT_METHODS:
        out = backend.divergence(net, x, method=method)
        assert str(out.dtype).endswith("float32")
    mlp = backend.build(MLPSpec(dim=6))
    assert backend.divergence(mlp, x, method="dense_loop").shape == (2,)


@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "sin"])
def test_activations_match_reference(backend, activation, rng):
    spec = HollowSpec(dim=4, d_h=2, trans_hidden=(5,), activation=activation, dtype="float64")
    for method in ("hollow", "hollow_forward"):
        err, scale = _ddim_error(backend, spec, method, 3, rng)
        assert scale > 1e-4
        assert err < TOL


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_affine_transformer_has_vanishing_higher_orders(backend, method, rng):
    spec = HollowSpec(dim=3, d_h=2, cond_hidden=(), trans_hidden=(), dtype="float64")
    for k in (1, 2, 3):
        err, _ = _ddim_error(backend, spec, method, k, rng, batch=2)
        assert err < TOL, f"k={k}"


def _call_opts_for(spec, method):
    opts = call_opts(spec)
    if method == "hutchinson":
        opts |= {"seed": 3, "n_probes": 2}
    return opts


@pytest.mark.parametrize("method", (*EXACT_METHODS, "hutchinson"))
@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_value_and_agrees_with_separate_calls(backend, spec_name, method, rng):
    """value_and_* returns f(x) and exactly what divergence/ddim return on their own."""
    spec = SPECS[spec_name]
    net = backend.build(spec, seed=4)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    opts = _call_opts_for(spec, method)
    t = opts.get("t")
    f_want = backend.to_numpy(net(t, x) if t is not None else net(x))
    ks = (1,) if method == "hutchinson" else (1, 2)
    for k in ks:
        f, diag = backend.value_and_ddim(net, x, k=k, method=method, **opts)
        assert np.abs(backend.to_numpy(f) - f_want).max() < TOL
        want = backend.to_numpy(backend.ddim(net, x, k=k, method=method, **opts))
        np.testing.assert_allclose(backend.to_numpy(diag), want, rtol=0, atol=TOL)
    f, div = backend.value_and_divergence(net, x, method=method, **opts)
    assert np.abs(backend.to_numpy(f) - f_want).max() < TOL
    want = backend.to_numpy(backend.divergence(net, x, method=method, **opts))
    np.testing.assert_allclose(backend.to_numpy(div), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_value_and_tangent_by_hand(backend, spec_name, k, rng):
    """hollow_forward, the value and Taylor series carried by hand through tau, to order 4 on
    every test model (the other exact methods are checked to order 3 above)."""
    err, scale = _ddim_error(backend, SPECS[spec_name], "hollow_forward", k, rng)
    assert scale > 1e-3
    assert err < TOL, f"{backend.name} k={k}: max error {err:.3g}"
