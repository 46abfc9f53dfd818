"""Every exact method equals an independent full-Jacobian/Hessian reference, in float64."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
from _reference import reference_ddim
from conftest import SPECS, backend_or_skip, call_opts

from impls import EXACT_METHODS, HOLLOW_METHODS, HollowSpec, MLPSpec, param_matched_mlp

TOL = 1e-10
DENSE_METHODS = ("dense_loop", "dense_vectorized")


@functools.cache
def _reference(backend_name: str, spec: HollowSpec, k: int, batch: int):
    """(x, the float64 reference D_dim^k of the spec's model at seed 3): computed once, checked
    against every method (x: a fresh ``rng`` fixture's first draw, as the tests' own). Both
    backends build the same weights from a seed (test_parity.py), so torch's reference serves
    JAX's methods too where torch is installed (JAX's compiles once per spec and k)."""
    B = backend_or_skip("torch" if importlib.util.find_spec("torch") else backend_name)
    x = np.random.default_rng(1234).standard_normal((batch, spec.dim))
    want = reference_ddim(B, B.build(spec, seed=3), B.asarray(x), k, call_opts(spec).get("t"))
    return x, B.to_numpy(want)


def _ddim_error(B, spec, method, k, batch=3):
    x, want = _reference(B.name, spec, k, batch)
    got = B.to_numpy(B.ddim(B.build(spec, seed=3), B.asarray(x), k=k, method=method,
                            **call_opts(spec)))  # fmt: skip
    assert got.shape == (batch, spec.dim)
    return np.abs(got - want).max(), np.abs(want).max()


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("method", EXACT_METHODS)
def test_exact_methods_match_reference(backend, spec_name, method, k):
    err, scale = _ddim_error(backend, SPECS[spec_name], method, k)
    assert scale > 1e-3  # the reference is not trivially zero
    assert err < TOL, f"{backend.name} {method} k={k}: max error {err:.3g}"


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_fourth_order(backend, method):
    spec = HollowSpec(dim=3, d_h=2, cond_hidden=(), trans_hidden=(5,), dtype="float64")
    err, scale = _ddim_error(backend, spec, method, 4, batch=2)
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
def test_activations_match_reference(backend, activation):
    spec = HollowSpec(dim=4, d_h=2, trans_hidden=(5,), activation=activation, dtype="float64")
    for method in ("hollow", "hollow_forward"):
        err, scale = _ddim_error(backend, spec, method, 3)
        assert scale > 1e-4
        assert err < TOL


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_affine_transformer_has_vanishing_higher_orders(backend, method):
    spec = HollowSpec(dim=3, d_h=2, cond_hidden=(), trans_hidden=(), dtype="float64")
    for k in (1, 2, 3):
        err, _ = _ddim_error(backend, spec, method, k, batch=2)
        assert err < TOL, f"k={k}"


def _call_opts_for(spec, method):
    opts = call_opts(spec)
    if method == "hutchinson":
        opts |= {"seed": 3, "n_probes": 2}
    return opts


# The hollow methods on every test model; the dense ones and Hutchinson, which call the model as
# a whole whatever its conditioner, with and without a time input (made's conditioner under
# them: test_exact_methods_match_reference, test_divergence_gradients).
VALUE_AND_CASES = [
    (spec_name, method)
    for method in (*EXACT_METHODS, "hutchinson")
    for spec_name in sorted(SPECS)
    if method in HOLLOW_METHODS or spec_name != "made"
]


@pytest.mark.parametrize(("spec_name", "method"), VALUE_AND_CASES)
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
def test_value_and_tangent_by_hand(backend, spec_name):
    """hollow_forward, the value and Taylor series carried by hand through tau, at order 4 on
    every test model (orders 1-3 on each: test_exact_methods_match_reference)."""
    k = 4
    err, scale = _ddim_error(backend, SPECS[spec_name], "hollow_forward", k)
    assert scale > 1e-3
    assert err < TOL, f"{backend.name} k={k}: max error {err:.3g}"


# --- a model of the user's own: no spec, any callable (batch, dim) -> (batch, dim) ----------


def _own_mlp(B, dim, **kw):
    import own_models

    return (own_models.torch_mlp if B.name == "torch" else own_models.jax_mlp)(dim, 0, **kw)


@pytest.mark.parametrize("method", [*DENSE_METHODS, "hutchinson"])
def test_own_model_divergence_matches_reference(backend, method, rng):
    """A plain float64 MLP of the user's own (torch: an nn.Module; JAX: an equinox module that
    vmaps its per-sample network): the dense methods equal the full-Jacobian reference; the
    Hutchinson mean of many probes lies within 5 standard errors of it (Rademacher probes:
    variance sum_{i!=j} J_ij^2 + J_ij J_ji per probe)."""
    dim, batch = 4, 3
    net = _own_mlp(backend, dim)
    x = backend.asarray(rng.standard_normal((batch, dim)))
    jac = backend.to_numpy(reference_derivative_of(backend, net, x))  # (batch, d, d)
    want = np.trace(jac, axis1=1, axis2=2)
    if method == "hutchinson":
        opts = {"n_probes": 4096, "seed": 0}
        off = jac * (1 - np.eye(dim))
        var = ((off**2).sum((1, 2)) + (off * off.transpose(0, 2, 1)).sum((1, 2))) / 4096
        tol = 5 * np.sqrt(var) + 1e-12
    else:
        opts, tol = {}, TOL * max(1.0, np.abs(want).max())
    f, got = backend.value_and_divergence(net, x, method=method, **opts)
    assert np.all(np.abs(backend.to_numpy(got) - want) <= tol)
    np.testing.assert_allclose(backend.to_numpy(f), backend.to_numpy(net(x)), rtol=1e-12)


def reference_derivative_of(B, net, x):
    from _reference import reference_derivative

    return reference_derivative(B, net, x, 1)


def test_own_model_torch_equals_jax_on_identical_weights(rng):
    """The same numpy weights in a torch module and an equinox one give the same divergence."""
    from conftest import backend_or_skip

    got = {}
    x = rng.standard_normal((3, 5))
    for name in ("torch", "jax"):
        B = backend_or_skip(name)
        got[name] = B.to_numpy(B.divergence(_own_mlp(B, 5), B.asarray(x), method="dense_loop"))
    np.testing.assert_allclose(got["torch"], got["jax"], rtol=1e-12, atol=1e-12)


def test_own_model_train_step_reaches_its_parameters(backend, rng):
    """The fair step's gradients reach the user's parameters (torch .grad, JAX grad leaves)."""
    from bench.workloads.operators import Point, step

    net = _own_mlp(backend, 4, dtype="float32")
    x = backend.asarray(rng.standard_normal((3, 4)).astype("float32"))
    point = Point("divergence", backend.name, "cpu", "dense_vectorized", "custom", 4, 3, 1, "train")
    fn, args, values_of = step(backend, net, x, point)
    out = fn(*args)
    if backend.name == "torch":
        grads = [p.grad for p in net.parameters()]
    else:
        import equinox as eqx
        import jax

        grads = [g for g in jax.tree.leaves(out[1]) if eqx.is_array(g)]
    assert len(grads) == 4 and all(np.abs(backend.to_numpy(g)).sum() > 0 for g in grads)
    assert backend.to_numpy(values_of(out)).shape == (3,)
