"""Bad input raises ValueError/TypeError whose message names the problem, in both backends."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPECS, backend_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st

from impls import Backend, HollowSpec, MLPSpec, load_backend

SPEC = SPECS["masked"]  # float64, dim 5
BAD_CALLS = {
    # name: (x maker, call kwargs, error type, message pattern)
    "1-d x": (lambda r: r.standard_normal(5), {}, ValueError, r"shape \(batch, 5\)"),
    "wrong dim": (lambda r: r.standard_normal((3, 4)), {}, ValueError, r"shape \(batch, 5\)"),
    "empty batch": (lambda r: np.zeros((0, 5)), {}, ValueError, "at least one sample"),
    "dtype": (lambda r: r.standard_normal((3, 5)).astype(np.float32), {}, TypeError, "dtype"),
    "k=0": (None, {"k": 0}, ValueError, "k must be >= 1"),
    "k=5": (None, {"k": 5}, ValueError, "k must be <= 4"),
    "k float": (None, {"k": 1.0}, TypeError, "k must be an int"),
    "method": (None, {"method": "exact"}, ValueError, "unknown method 'exact'.*hollow"),
    "nan": (lambda r: np.full((2, 5), np.nan), {}, ValueError, "NaN or inf"),
    "inf": (lambda r: np.array([[1, 2, np.inf, 4, 5.0]]), {}, ValueError, "NaN or inf"),
    "hutchinson k": (None, {"method": "hutchinson", "k": 2}, ValueError, "k=1 only"),
    "option": (None, {"n_probes": 3}, TypeError, "unexpected option.*n_probes"),
    "n_probes": (None, {"method": "hutchinson", "n_probes": 0}, ValueError, "n_probes"),
    "noise": (None, {"method": "hutchinson", "noise": "uniform"}, ValueError, "noise"),
    "chunk": (None, {"method": "dense_vectorized", "chunk_size": 0}, ValueError, "chunk_size"),
    "unexpected t": (None, {"t": 0.1}, ValueError, "not time-dependent"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_call(backend, case, rng):
    make_x, kwargs, error, pattern = BAD_CALLS[case]
    net = backend.build(SPEC)
    x = backend.asarray((make_x or (lambda r: r.standard_normal((3, 5))))(rng))
    with pytest.raises(error, match=pattern):
        backend.ddim(net, x, **kwargs)
    # value_and_ddim checks the same way and says the same words.
    with pytest.raises(error, match=pattern):
        backend.value_and_ddim(net, x, **kwargs)
    if "k" not in kwargs:
        with pytest.raises(error, match=pattern):
            backend.value_and_divergence(net, x, **kwargs)


def test_non_array_input(backend):
    net = backend.build(SPEC)
    with pytest.raises(TypeError, match="x must be a"):
        backend.divergence(net, np.zeros((2, 5)))
    with pytest.raises(TypeError, match="net must be a model"):
        backend.divergence(object(), backend.asarray(np.zeros((2, 5))))
    with pytest.raises(TypeError, match="x must be a"):
        backend.value_and_divergence(net, np.zeros((2, 5)))


def test_hollow_methods_reject_mlps(backend, rng):
    mlp = backend.build(MLPSpec(dim=5, dtype="float64"))
    x = backend.asarray(rng.standard_normal((2, 5)))
    for method in ("hollow", "hollow_forward"):
        with pytest.raises(ValueError, match="needs a HollowNet, got MLPSpec"):
            backend.divergence(mlp, x, method=method)
        with pytest.raises(ValueError, match="needs a HollowNet, got MLPSpec"):
            backend.value_and_ddim(mlp, x, k=2, method=method)


def test_time_argument_checked(backend, rng):
    spec = SPECS["masked_t"]
    net = backend.build(spec)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    with pytest.raises(ValueError, match="time-dependent: pass t"):
        backend.divergence(net, x)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        backend.divergence(net, x, t=backend.asarray(np.zeros(4)))
    with pytest.raises(ValueError, match="t contains NaN"):
        backend.divergence(net, x, t=float("nan"))


def test_unknown_backend_and_device():
    with pytest.raises(ValueError, match="unknown backend 'numpy'; available: torch, jax"):
        load_backend("numpy")
    for name in ("torch", "jax"):
        backend_or_skip(name)
        with pytest.raises(ValueError, match=r"device 'tpu:0' is not available.*available: cpu"):
            load_backend(name, device="tpu:0")
        with pytest.raises(TypeError, match="device must be a str"):
            load_backend(name, device=0)


def test_backend_interface(backend, rng):
    assert isinstance(backend, Backend)
    assert backend.devices()[0] == "cpu" and backend.device == "cpu"
    a = rng.standard_normal((3, 2))
    back = backend.to_numpy(backend.asarray(a))
    np.testing.assert_array_equal(back, a)
    backend.sync(backend.asarray(a))
    assert isinstance(backend.matmul_precision(), str)
    with pytest.raises(TypeError, match="HollowSpec or MLPSpec"):
        backend.build({"dim": 3})


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    dim=st.integers(1, 6),
    x_dim=st.integers(1, 6),
    conditioner=st.sampled_from(["masked", "made"]),
)
def test_shapes_property(batch, dim, x_dim, conditioner):
    """Any (batch, dim) input gives (batch, dim) and (batch,); any other width is refused."""
    B = backend_or_skip("torch")
    net = B.build(HollowSpec(dim=dim, d_h=2, conditioner=conditioner, trans_hidden=(4,)))
    x = B.asarray(np.ones((batch, x_dim), dtype=np.float32))
    if x_dim != dim:
        with pytest.raises(ValueError, match=f"shape \\(batch, {dim}\\)"):
            B.ddim(net, x)
        return
    assert tuple(B.ddim(net, x, k=2).shape) == (batch, dim)
    assert tuple(B.divergence(net, x, method="hutchinson").shape) == (batch,)


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    dim=st.integers(1, 5),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.integers(0, 100),
)
def test_any_non_finite_entry_is_caught(batch, dim, bad, where):
    B = backend_or_skip("jax")
    net = B.build(HollowSpec(dim=dim, d_h=2, trans_hidden=(4,), dtype="float64"))
    x = np.zeros((batch, dim))
    x.flat[where % x.size] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        B.divergence(net, B.asarray(x), method="dense_vectorized")


def _own(B, dim, **kw):
    import own_models

    return (own_models.torch_mlp if B.name == "torch" else own_models.jax_mlp)(dim, 0, **kw)


@pytest.mark.parametrize("method", ["dense_loop", "dense_vectorized", "hutchinson", "xtrace"])
def test_own_model_must_map_dim_to_dim(backend, method, rng):
    net = _own(backend, 8, out=7)  # (batch, 8) -> (batch, 7)
    x = backend.asarray(rng.standard_normal((3, 8)))
    opts = {"seed": 0} if method in ("hutchinson", "xtrace") else {}
    pattern = r"the model maps \(batch, 8\) to \(batch, 7\); it must map \(batch, dim\) to"
    with pytest.raises(ValueError, match=pattern):
        backend.divergence(net, x, method=method, **opts)


def test_own_model_checks_its_input(backend, rng):
    net = _own(backend, 4)  # float64 weights
    with pytest.raises(ValueError, match=r"x must have shape \(batch, dim\), got \(4,\)"):
        backend.divergence(net, backend.asarray(rng.standard_normal(4)), method="dense_loop")
    x32 = backend.asarray(rng.standard_normal((2, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="x has dtype float32 but the model is float64"):
        backend.divergence(net, x32, method="dense_loop")
    x = backend.asarray(rng.standard_normal((2, 4)))
    with pytest.raises(ValueError, match="needs a HollowNet, got MLP"):
        backend.divergence(net, x, method="hollow")
    with pytest.raises(ValueError, match="not time-dependent"):
        backend.divergence(net, x, method="dense_loop", t=0.5)
    with pytest.raises(TypeError, match="net must be a model: one this backend built, or a"):
        backend.divergence(3, x, method="dense_loop")
