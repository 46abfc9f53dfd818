"""Hutch++, XTrace and XDiag checked against the exact Jacobian, in float64 with fixed seeds.

- Unbiased: over N_SEEDS probe seeds, the mean lies within 4 standard errors of the exact
  trace (or, for XDiag, of D_dim f on every component).
- Lower variance than Hutchinson where the spectrum decays (singular values 2^-i).
- Exact for its probes: values and gradients (to x and every parameter) equal a reference that
  builds each leave-one-out projector explicitly from a dense Jacobian, and torch equals JAX.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
from _reference import reference_derivative
from conftest import SPECS, backend_or_skip
from test_gradients import _grads

from impls import ESTIMATORS

N_SEEDS = 400
SPEC = SPECS["masked"]  # d = 5
# Budgets small enough that no estimator is exact at d = 5 (its sketch stays narrower than d).
BUDGETS = {"hutchpp": 7, "xtrace": 6, "xdiag": 6}
TOL = 1e-10


def _estimates(B, net, x, method: str, trace: bool) -> np.ndarray:
    """(N_SEEDS, batch[, d]) independent estimates, one per probe seed (Gaussian probes)."""
    op = B.divergence if trace else B.ddim
    opts = {"method": method, "n_matvecs": BUDGETS[method]}
    if B.name == "jax":
        import jax

        keys = jax.random.split(jax.random.key(0), N_SEEDS)
        return np.asarray(jax.jit(jax.vmap(lambda key: op(net, x, key=key, **opts)))(keys))
    import torch

    with torch.no_grad():
        return np.stack([B.to_numpy(op(net, x, seed=s, **opts)) for s in range(N_SEEDS)])


@pytest.fixture
def setup(backend, rng):
    net = backend.build(SPEC, seed=9)
    x = backend.asarray(rng.standard_normal((3, SPEC.dim)))
    return backend, net, x, backend.to_numpy(reference_derivative(backend, net, x, 1))


@pytest.mark.parametrize("method", ESTIMATORS)
def test_trace_unbiased(setup, method):
    B, net, x, jac = setup
    est = _estimates(B, net, x, method, trace=True)
    exact = np.trace(jac, axis1=1, axis2=2)
    z = (est.mean(0) - exact) / (est.std(0, ddof=1) / np.sqrt(N_SEEDS))
    assert np.abs(z).max() < 4, f"{method}: mean off by {z} standard errors"
    assert est.std(0).min() > 1e-6  # random, not exact at this budget: the test has teeth


def test_xdiag_unbiased_on_every_component(setup):
    B, net, x, jac = setup
    est = _estimates(B, net, x, "xdiag", trace=False)  # (N, batch, d)
    exact = np.diagonal(jac, axis1=1, axis2=2)
    z = (est.mean(0) - exact) / (est.std(0, ddof=1) / np.sqrt(N_SEEDS))
    assert np.abs(z).max() < 4, f"xdiag: mean off by {z} standard errors"


def _decaying_map(d: int) -> np.ndarray:
    """A d x d matrix with singular values 2^-i between random orthogonal bases."""
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return u @ np.diag(2.0 ** -np.arange(d)) @ v.T


def _gaussian_draws(B, seed: int):
    rng = np.random.default_rng(seed)
    return lambda shape: B.asarray(rng.standard_normal(shape))


@pytest.mark.parametrize(("n_matvecs", "gain"), [(12, 1.0), (48, 4.0)])
def test_variance_below_hutchinson_on_a_decaying_spectrum(backend, n_matvecs, gain):
    """On f(x) = A x, Hutchinson's variance with m Rademacher probes (its default, and the
    better of its two) is 2 sum_{i != j} S_ij^2 / m, S = (A + A^T) / 2; Hutch++ and XTrace
    must beat it by ``gain``."""
    d, est = 32, _module(backend)
    a = _decaying_map(d)
    sym = (a + a.T) / 2
    hutchinson_var = 2 * ((sym * (1 - np.eye(d))) ** 2).sum() / n_matvecs
    mat, x = backend.asarray(a), backend.asarray(np.zeros((1, d)))
    for method in ("hutchpp", "xtrace"):
        fun = getattr(est, method)
        values = [
            backend.to_numpy(fun(lambda y: y @ mat.T, x, n_matvecs, _gaussian_draws(backend, s)))
            for s in range(200)
        ]
        var = np.var(values, ddof=1)
        assert var * gain < hutchinson_var, f"{method}: var {var:.3g} vs {hutchinson_var:.3g}"
        assert abs(np.mean(values) - np.trace(a)) < 4 * np.sqrt(var / 200) + TOL


def _module(B):
    return importlib.import_module(f"impls.{B.name}_backend.estimators")


def _xp(B):
    return importlib.import_module("torch" if B.name == "torch" else "jax.numpy")


def _projector(xp, jac, sketch):
    """I - Q Q^T, Q an orthonormal basis of the range of J @ sketch (batch, d, d)."""
    q, _ = xp.linalg.qr(jac @ sketch)
    return xp.eye(jac.shape[-1], dtype=jac.dtype) - q @ q.mT


def _leave_one_out(xp, omega):
    """(w_i, the probes but w_i) for each column i of omega (batch, d, s)."""
    s = omega.shape[-1]
    for i in range(s):
        yield omega[..., i : i + 1], xp.concatenate([omega[..., :i], omega[..., i + 1 :]], -1)


def dense_estimate(B, method: str, jac, probes, n_matvecs: int):
    """The estimate from the definitions, with an explicit projector per left-out probe and the
    dense Jacobian ``jac`` (batch, d, d); probes (n, batch, d) as ``draw`` returns them."""
    xp = _xp(B)
    omega = xp.moveaxis(probes, 0, -1)  # (batch, d, n)
    if method == "hutchpp":
        s = n_matvecs // 3
        rest = _projector(xp, jac, omega[..., :s]) @ omega[..., s:]
        exact_part = xp.einsum("bii->b", jac) - xp.einsum(
            "bij,bji->b", _projector(xp, jac, omega[..., :s]), jac
        )
        return exact_part + xp.einsum("bin,bij,bjn->b", rest, jac, rest) / rest.shape[-1]
    terms = []
    for w, others in _leave_one_out(xp, omega):
        comp = _projector(xp, jac, others)  # I - P_i
        if method == "xtrace":
            v = comp @ w
            kept = xp.einsum("bii->b", jac) - xp.einsum("bij,bji->b", comp, jac)
            terms.append(kept + (v * (jac @ v)).sum((1, 2)))
        else:
            kept = xp.einsum("bii->bi", jac) - xp.einsum("bij,bji->bi", comp, jac)
            terms.append(kept + (w * (comp @ jac @ w))[..., 0])
    return sum(terms) / len(terms)


def _losses(B, method: str, probes, weights):
    """(the estimator's loss, the dense definition's) on fixed probes: sums of weighted values."""
    probes, weights, n_matvecs = B.asarray(probes), B.asarray(weights), BUDGETS[method]
    fun = getattr(_module(B), method)

    def loss(n, y):
        return (fun(n, y, n_matvecs, lambda _: probes) * weights).sum()

    def reference_loss(n, y):
        jac = reference_derivative(B, n, y, 1)
        return (dense_estimate(B, method, jac, probes, n_matvecs) * weights).sum()

    return loss, reference_loss


@pytest.mark.parametrize("method", ESTIMATORS)
def test_values_and_gradients_match_dense_definition(backend, method, rng):
    """For fixed probes each estimator is a function of x and the weights; it and its gradients
    equal the definition's, evaluated on a dense Jacobian (QR and all). The definition is
    torch's where torch is installed: both backends build the same weights from a seed
    (test_parity.py), and JAX would compile it afresh for each estimator."""
    x = rng.standard_normal((3, SPEC.dim))
    n_matvecs = BUDGETS[method]
    shape = (n_matvecs - n_matvecs // 3 if method == "hutchpp" else n_matvecs // 2, 3, SPEC.dim)
    probes = rng.standard_normal(shape)
    weights = rng.standard_normal((3, SPEC.dim) if method == "xdiag" else (3,))
    ref = backend_or_skip("torch" if importlib.util.find_spec("torch") else backend.name)
    loss, _ = _losses(backend, method, probes, weights)
    _, reference_loss = _losses(ref, method, probes, weights)
    net, ref_net = backend.build(SPEC, seed=4), ref.build(SPEC, seed=4)
    got, got_x = _grads(backend, net, loss, backend.asarray(x))
    want, want_x = _grads(ref, ref_net, reference_loss, ref.asarray(x))
    value = backend.to_numpy(backend.jit(loss)(net, backend.asarray(x)))
    reference_value = ref.to_numpy(ref.jit(reference_loss)(ref_net, ref.asarray(x)))
    assert abs(value - reference_value) < TOL
    for name in want:
        assert np.abs(got[name] - want[name]).max() < TOL, f"d/d{name} differs ({method})"
    assert np.abs(got_x - want_x).max() < TOL
    assert np.abs(got["cond0_w"]).max() > 0  # the conditioner's share is in it


@pytest.mark.parametrize("method", ESTIMATORS)
def test_torch_and_jax_agree_on_identical_probes(method, rng):
    backends = [backend_or_skip(name) for name in ("torch", "jax")]
    x_np = rng.standard_normal((4, SPEC.dim))
    probes = rng.standard_normal((BUDGETS[method], 4, SPEC.dim))
    values = []
    for B in backends:
        net, x = B.build(SPEC, seed=2), B.asarray(x_np)
        draw = lambda shape, B=B: B.asarray(probes[: shape[0]])  # noqa: E731
        values.append(B.to_numpy(getattr(_module(B), method)(net, x, BUDGETS[method], draw)))
    np.testing.assert_allclose(values[0], values[1], rtol=0, atol=TOL)
    assert np.abs(values[0]).max() > 1e-3


BAD_CALLS = {
    # name: (op, kwargs, error, pattern)
    "hutchpp budget": ("divergence", {"method": "hutchpp", "n_matvecs": 2}, ValueError,
                       r"'hutchpp' needs n_matvecs >= 3"),
    "xtrace budget": ("divergence", {"method": "xtrace", "n_matvecs": 1}, ValueError,
                      r"'xtrace' needs n_matvecs >= 2"),
    "budget type": ("divergence", {"method": "xdiag", "n_matvecs": 4.0}, ValueError, "n_matvecs"),
    "xdiag k": ("ddim", {"method": "xdiag", "k": 2}, ValueError, r"'xdiag' estimates k=1 only"),
    "noise": ("ddim", {"method": "xdiag", "noise": "uniform"}, ValueError, "unknown noise"),
    "rademacher sketch": ("divergence", {"method": "hutchpp", "noise": "rademacher"}, ValueError,
                          r"'rademacher' for 'hutchpp'; use one of \('gaussian',\)"),
    "trace only": ("ddim", {"method": "hutchpp", "seed": 0}, ValueError, "trace only"),
    "probes option": ("divergence", {"method": "xtrace", "n_probes": 4}, TypeError,
                      r"unexpected option.*n_probes"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_call(backend, case, rng):
    op, kwargs, error, pattern = BAD_CALLS[case]
    net, x = backend.build(SPEC), backend.asarray(rng.standard_normal((2, SPEC.dim)))
    with pytest.raises(error, match=pattern):
        getattr(backend, op)(net, x, **kwargs)


@pytest.mark.parametrize("method", ESTIMATORS)
def test_jax_needs_a_key_or_seed(method):
    """As with hutchinson: JAX randomness is explicit, never a hidden default key."""
    B = backend_or_skip("jax")
    import jax

    net, x = B.build(SPEC), B.asarray(np.ones((2, SPEC.dim)))
    with pytest.raises(TypeError, match=rf"{method}.*key=.*seed="):
        B.divergence(net, x, method=method)
    a, b = (
        B.to_numpy(B.divergence(net, x, method=method, key=k))
        for k in jax.random.split(jax.random.key(0))
    )
    assert not np.allclose(a, b)  # fresh keys, fresh probes
