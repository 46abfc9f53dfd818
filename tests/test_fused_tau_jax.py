"""The JAX ``pallas`` variant: tau's value and tangent in one Pallas kernel
(impls/jax_backend/fused_tau.py), run in Pallas's interpreter on the CPU, and compiled for real
on a GPU where one is visible (those cases skip elsewhere).

The kernel runs in float32; the reference is float64 autodiff of the model's own transformer
(``net.transformer``), which shares no code with the kernel or the Taylor module. Matmuls run
at full float32 precision ("highest"), so that on a GPU neither side takes TF32's shortcut.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from bench.harness import options
from bench.workloads import operators as bench_operators
from bench.workloads.operators import Point
from impls import METHODS, HollowSpec, load_backend

pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from impls.jax_backend import fused_tau  # noqa: E402
from tests.conftest import backend_or_skip  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # float32 kernel against float64
DEVICES = ("cpu", "cuda:0")  # the interpreter; the kernel compiled by Triton

# Every activation; one and two hidden layers, widths padded to 16 (8, 6 and d_h 3, 2);
# with and without t.
SPECS = {
    "tanh": HollowSpec(dim=5, d_h=3, cond_hidden=(4,), trans_hidden=(8, 8)),
    "sigmoid": HollowSpec(dim=5, d_h=3, trans_hidden=(8, 8), activation="sigmoid"),
    "softplus_t": HollowSpec(
        dim=5, d_h=2, trans_hidden=(6,), activation="softplus", time_dependent=True
    ),
    "sin_t": HollowSpec(dim=5, d_h=3, trans_hidden=(8, 8), activation="sin", time_dependent=True),
    # Narrower than a dot's 16 everywhere: d_h and both layers 1 wide, padded to 16.
    "narrow_t": HollowSpec(dim=5, d_h=1, trans_hidden=(1, 1), time_dependent=True),
}
BATCH = 7  # 35 rows: three 16-row tiles, the last one part padding


@pytest.fixture
def small_tiles(monkeypatch):
    """16-row tiles and at most two backward programs, so 35 rows span several tiles in each
    program and the rows end inside a tile."""
    monkeypatch.setattr(fused_tau, "FWD_TILE", 16)
    monkeypatch.setattr(fused_tau, "BWD_TILE", 16)
    monkeypatch.setattr(fused_tau, "MAX_PROGRAMS", 2)


def _backend(device: str):
    """The JAX backend on ``device``; skip where there is no such device."""
    backend = backend_or_skip("jax")
    if device not in backend.devices():
        pytest.skip(f"no {device} here: the kernel's GPU run needs one")
    return load_backend("jax", device)


def _reference(net, x, h, t):
    """(f, D_dim f) at h held fixed: tau is separable in x_i, so the gradient of the sum of
    its outputs is the diagonal."""
    f = net.transformer(x, h, t)
    return f, jax.grad(lambda y: net.transformer(y, h, t).sum())(x)


def _value_and_grads(fn, net, inputs, cotangents):
    """((f, D), gradients of <a, f> + <b, D> to tau's weights and to x, h, t)."""
    a, b = cotangents

    def loss(params, *inputs):
        f, deriv = fn(eqx.tree_at(lambda m: m.params, net, params), *inputs)
        return (a * f).sum() + (b * deriv).sum(), (f, deriv)

    tau = {k: v for k, v in net.params.items() if k.startswith("tau")}
    argnums = tuple(range(len(inputs) + 1))
    grad = jax.jit(jax.grad(lambda p, *i: loss({**net.params, **p}, *i), argnums, has_aux=True))
    grads, values = grad(tau, *inputs)
    return values, grads


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("device", DEVICES)
def test_kernel_matches_float64_autodiff(device, name, small_tiles):
    """f, D and the gradients to x, h, t and every tau weight, each activation."""
    backend = _backend(device)
    spec = SPECS[name]
    net = backend.build(spec, seed=3)
    net64 = backend.astype(net, "float64")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((BATCH, spec.dim))
    h = rng.standard_normal((BATCH, spec.dim, spec.d_h))
    inputs = (x, h, rng.uniform(0, 1, BATCH) if spec.time_dependent else None)
    cotangents = [rng.standard_normal((BATCH, spec.dim)) for _ in range(2)]

    def arrays(values, dtype):
        return [None if a is None else backend.asarray(a.astype(dtype)) for a in values]

    # Under jit the arrays' device is not known at trace time: say where the kernel runs.
    kernel = functools.partial(fused_tau.value_and_tangent, interpret=device == "cpu")
    with jax.default_matmul_precision("highest"):
        got_values, got_grads = _value_and_grads(
            kernel, net, arrays(inputs, np.float32), arrays(cotangents, np.float32)
        )
        want_values, want_grads = _value_and_grads(
            _reference, net64, arrays(inputs, np.float64), arrays(cotangents, np.float64)
        )
    for got, want, what in ((got_values, want_values, "(f, D)"), (got_grads, want_grads, "")):
        paths = jax.tree_util.tree_leaves_with_path(want)
        for (path, w), g in zip(paths, jax.tree.leaves(got), strict=True):
            label = what or jax.tree_util.keystr(path)
            assert g.dtype == jnp.float32, label
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=label)
    # t's gradient sums over the dimensions of each sample: a real (batch,) gradient here.
    assert not spec.time_dependent or np.abs(got_grads[1][2]).min() > 0


def _dots(jaxpr):
    """Every dot_general in a jaxpr, its sub-jaxprs' (a pallas_call's kernel, a loop's body)
    included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's, or a Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _dots(inner)


@pytest.mark.parametrize(("d_h", "widths"), [(1, (1, 1)), (3, (1,)), (16, (64, 1))], ids=str)
def test_narrow_layers_make_dots_at_least_16_wide(d_h, widths):
    """Triton's dots need every dimension >= 16: a layer 1 wide (or d_h = 1) is padded to 16
    in both kernels, never a 1-wide dot."""
    backend = backend_or_skip("jax")
    spec = HollowSpec(dim=4, d_h=d_h, trans_hidden=widths, time_dependent=True)
    net = backend.build(spec)
    x, t = jnp.ones((8, spec.dim), jnp.float32), jnp.full((8,), 0.5, jnp.float32)

    def step(net, x):
        f, deriv = fused_tau.value_and_tangent(net, x, net.conditioner(x, t), t, interpret=False)
        return (f * f).sum() + deriv.sum()

    jaxpr = jax.make_jaxpr(jax.grad(step, argnums=(0, 1)))(net, x).jaxpr
    kernels = [e for e in jaxpr.eqns if e.primitive.name == "pallas_call"]
    assert len(kernels) == 2
    dots = [d for k in kernels for d in _dots(k.params["jaxpr"])]
    assert dots
    for dot in dots:
        for operand in dot.invars:
            assert min(operand.aval.shape) >= fused_tau.MIN_WIDTH, (dot, operand.aval)


def test_triton_deprecation_filter_is_exact():
    """The filter hides jax 0.11's Triton deprecation, and no other DeprecationWarning."""
    message = (
        "The Pallas Triton backend is deprecated and will be removed in a future JAX version."
        " To keep using Pallas on GPU, please migrate to the Mosaic GPU backend."
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused_tau._filter_triton_deprecation.__wrapped__()
        warnings.warn(message, DeprecationWarning, stacklevel=1)
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn(message, UserWarning, stacklevel=1)
    assert [(w.category, str(w.message)[:9]) for w in caught] == [
        (DeprecationWarning, "something"),
        (UserWarning, "The Palla"),
    ]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus", "sin"])
def test_kernels_lower_to_triton_for_cuda(activation):
    """Both kernels of a train step lower through Triton for a CUDA device (no GPU needed to
    lower; Triton compiles them on the GPU): every primitive they use has a Triton rule."""
    backend = backend_or_skip("jax")
    spec = HollowSpec(dim=64, activation=activation, time_dependent=True)
    net = backend.build(spec)
    x, t = jnp.ones((512, spec.dim), jnp.float32), jnp.full((512,), 0.5, jnp.float32)

    def step(net, x):
        f, deriv = fused_tau.value_and_tangent(net, x, net.conditioner(x, t), t, interpret=False)
        return (f * f).sum() + deriv.sum()

    grad = jax.jit(jax.grad(step, argnums=(0, 1)))
    fused_tau._filter_triton_deprecation.cache_clear()  # as if no kernel had been built yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = grad.trace(net, x).lower(lowering_platforms=("cuda",)).as_text()
    # jax 0.11 warns at each lowering through Triton; the module filters exactly that.
    assert not [w for w in caught if fused_tau.TRITON_DEPRECATION in str(w.message)]
    assert text.count("xla.gpu.triton") == 2
    assert 'name = "fused_tau_forward"' in text and 'name = "fused_tau_backward"' in text


def test_unsupported_models_are_refused():
    backend = backend_or_skip("jax")
    x = backend.asarray(np.zeros((2, 4), np.float32))
    affine = backend.build(HollowSpec(dim=4, d_h=2, trans_hidden=()))
    with pytest.raises(ValueError, match=r"hidden layer in tau \(trans_hidden is \(\)\)"):
        fused_tau.value_and_tangent(affine, x, affine.conditioner(x), None)
    mlp = backend.build(bench_operators.model_spec("mlp_flop_matched", 4))
    with pytest.raises(ValueError, match="needs a HollowNet, got MLPSpec"):
        fused_tau.value_and_tangent(mlp, x, None, None)


@pytest.mark.parametrize("device", DEVICES)
def test_pallas_variant_train_step_matches_jit(device, monkeypatch):
    """The harness's hollow_forward train step (the package's default HollowNet) compiled as
    the pallas variant: the same loss, divergence and every parameter's gradient as jit's;
    its trace holds the kernel's forward and backward, jit's (compiled after it) neither."""
    backend = _backend(device)
    traced = []
    for name in ("_forward", "_backward"):
        real = getattr(fused_tau, name)
        spy = lambda *a, real=real, name=name: traced.append(name) or real(*a)  # noqa: E731
        monkeypatch.setattr(fused_tau, name, spy)
    point = Point("divergence", "jax", device, "hollow_forward", "hollownet", 8, 5, 1, "train")
    spec = bench_operators.model_spec(point.model, point.d)
    net = backend.build(spec, seed=0)
    x = backend.asarray(bench_operators.data(point.batch, point.d, spec.dtype))
    fn, args, _ = bench_operators.step(backend, net, x, point)
    with jax.default_matmul_precision("highest"):
        got = backend.compile_step(fn, args, "pallas")[0](*args)
        assert set(traced) == {"_forward", "_backward"}
        count = len(traced)
        want = backend.compile_step(fn, args, "jit")[0](*args)
        assert len(traced) == count
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def test_pallas_runs_hollow_forward_at_k1_and_skips_off_a_gpu():
    """The pallas variant's points are hollow_forward at k = 1, in both modes, each beside its
    jit twin; off a GPU they are skipped with the reason, on one they run."""
    settings = options.resolve({"preset": "paper"})
    devices = {"jax": ("cpu", "cuda:0")}
    grids = (
        bench_operators.Grid("divergence", METHODS, (1,)),
        bench_operators.Grid("ddim", METHODS),
    )
    points = [p for g in grids for p in bench_operators.expand(g, settings, devices)]
    fused = [p for p in points if p.variant == "pallas"]
    assert {(p.method, p.k, p.label) for p in fused} == {
        ("hollow_forward", 1, "hollow_forward+pallas")
    }
    assert {(p.mode, p.device) for p in fused} == {
        (mode, device) for mode in ("eval", "train") for device in devices["jax"]
    }
    jit = {p.id for p in points if p.variant == "jit"}
    assert all(Point(**{**p.__dict__, "variant": "jit"}).id in jit for p in fused)
    for p in fused:
        reason = bench_operators.variant_unavailable(p)
        assert reason is None if p.device == "cuda:0" else "needs a GPU" in reason
