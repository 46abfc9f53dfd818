"""Hutchinson estimators checked statistically against the exact Jacobian.

For one probe e, Var(e^T J e) = 2 * sum_{i != j} S_ij^2 (Rademacher) or 2 * ||S||_F^2 (Gaussian),
with S = (J + J^T) / 2. The tests compare the sample mean and variance over many seeds with
these, using bounds many standard errors wide; the seeds are fixed, so a run is deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
from _reference import reference_derivative
from conftest import SPECS, backend_or_skip

N_SEEDS = 600
SPEC = SPECS["masked"]


def _estimates(B, net, x, n_probes, noise, trace=True):
    """(N_SEEDS, batch[, dim]) independent estimates, one per seed."""
    if B.name == "jax":
        import jax

        op = B.divergence if trace else B.ddim

        def one(key):
            return op(net, x, method="hutchinson", n_probes=n_probes, noise=noise, key=key)

        keys = jax.random.split(jax.random.key(0), N_SEEDS)
        return np.asarray(jax.jit(jax.vmap(one))(keys))
    import torch

    op = B.divergence if trace else B.ddim
    with torch.no_grad():
        return np.stack(
            [
                B.to_numpy(op(net, x, method="hutchinson", n_probes=n_probes, noise=noise, seed=s))
                for s in range(N_SEEDS)
            ]
        )


def _exact(B, net, x):
    jac = B.to_numpy(reference_derivative(B, net, x, 1))  # (batch, d, d)
    sym = (jac + jac.transpose(0, 2, 1)) / 2
    off = sym * (1 - np.eye(sym.shape[1]))
    var = {"rademacher": 2 * (off**2).sum((1, 2)), "gaussian": 2 * (sym**2).sum((1, 2))}
    return np.trace(jac, axis1=1, axis2=2), np.diagonal(jac, axis1=1, axis2=2), var


@pytest.fixture
def setup(backend, rng):
    net = backend.build(SPEC, seed=9)
    x = backend.asarray(rng.standard_normal((5, SPEC.dim)))
    return backend, net, x, _exact(backend, net, x)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_trace_unbiased_with_predicted_variance(setup, noise):
    B, net, x, (trace, _, var) = setup
    est = _estimates(B, net, x, 1, noise)
    z = (est.mean(0) - trace) / np.sqrt(var[noise] / N_SEEDS)
    assert np.abs(z).max() < 5, f"mean off by {z} standard errors"
    ratio = est.var(0, ddof=1) / var[noise]
    assert np.all((ratio > 0.6) & (ratio < 1.6)), f"variance / predicted = {ratio}"


def test_variance_falls_like_one_over_probes(setup):
    B, net, x, (trace, _, var) = setup
    one, many = _estimates(B, net, x, 1, "rademacher"), _estimates(B, net, x, 8, "rademacher")
    ratio = one.var(0, ddof=1) / many.var(0, ddof=1)
    assert np.all((ratio > 8 / 1.8) & (ratio < 8 * 1.8)), f"var(1)/var(8) = {ratio}"
    z = (many.mean(0) - trace) / np.sqrt(var["rademacher"] / 8 / N_SEEDS)
    assert np.abs(z).max() < 5


def test_diagonal_estimator_unbiased(setup):
    B, net, x, (_, diag, _) = setup
    est = _estimates(B, net, x, 1, "gaussian", trace=False)  # (N, batch, d)
    se = est.std(0, ddof=1) / np.sqrt(N_SEEDS)
    assert np.abs((est.mean(0) - diag) / se).max() < 5.5


def test_seed_reproducible(setup):
    B, net, x, _ = setup
    key = {"key": __import__("jax").random.key(3)} if B.name == "jax" else {"seed": 3}
    a, b = (B.to_numpy(B.divergence(net, x, method="hutchinson", **key)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    other = {"seed": 4}
    c = B.to_numpy(B.divergence(net, x, method="hutchinson", **other))
    assert not np.allclose(a, c)


def test_jax_needs_a_key_or_seed():
    """JAX's convention: randomness is explicit. Without ``key`` or ``seed`` the JAX estimator
    refuses, rather than reuse one hidden key, and so one probe, on every call."""
    B = backend_or_skip("jax")
    import jax

    net = B.build(SPEC)
    x = B.asarray(np.ones((2, SPEC.dim)))
    for op in (B.divergence, B.ddim):
        with pytest.raises(TypeError, match=r"hutchinson.*key=.*seed="):
            op(net, x, method="hutchinson")
    keys = jax.random.split(jax.random.key(0))
    a, b = (B.to_numpy(B.divergence(net, x, method="hutchinson", key=k)) for k in keys)
    assert not np.allclose(a, b)  # fresh keys, fresh probes
