"""Parameter (and input) gradients of the operators equal those through a dense reference.

The reference loss is built from full per-sample Jacobians/Hessians, so the conditioner's share
of d(div)/dtheta is in it; an operator that dropped it (a plain ``h.detach()``) would fail.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
from _reference import reference_ddim
from conftest import SPECS, backend_or_skip, call_opts

from impls import EXACT_METHODS

TOL = 1e-10


def _grads(B, net, loss_fn, x):
    """{param name: gradient} and the gradient with respect to x, as numpy."""
    if B.name == "torch":
        import torch

        x = x.clone().requires_grad_()
        net.zero_grad()
        loss_fn(net, x).backward()

        # A tensor the loss does not depend on (the last bias, for k >= 1) has no grad.
        def grad(p):
            return (torch.zeros_like(p) if p.grad is None else p.grad).numpy().copy()

        return {n: grad(p) for n, p in net.params.items()}, grad(x)
    import jax

    g_net, g_x = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(net, x)
    return {n: np.asarray(v) for n, v in g_net.params.items()}, np.asarray(g_x)


def _losses(B, spec, method, k, weights):
    """The operator's loss and the reference's, both a weighted sum of D_dim^k."""
    opts = call_opts(spec)
    w = B.asarray(weights)

    def operator_loss(net, x):
        return (B.ddim(net, x, k=k, method=method, **opts) * w).sum()

    def reference_loss(net, x):
        return (reference_ddim(B, net, x, k, opts.get("t")) * w).sum()

    return operator_loss, reference_loss


@functools.cache
def _case(backend_name: str, spec_name: str, k: int):
    """(x, weights, the reference loss's gradients) of the model SPECS[spec_name] at seed 7:
    the float64 dense reference's gradients, computed once and checked against every operator
    and loss below that shares them. Both backends build the same weights under the same
    names from a seed (test_parity.py), so torch's reference serves JAX's operators too where
    torch is installed: at k = 4 it takes 0.3 s, JAX's own ~15 s of compilation."""
    spec = SPECS[spec_name]
    B = backend_or_skip("torch" if importlib.util.find_spec("torch") else backend_name)
    gen = np.random.default_rng(1234)
    x, weights = gen.standard_normal((3, spec.dim)), gen.standard_normal((3, spec.dim))
    _, ref_loss = _losses(B, spec, "hollow", k, weights)
    return x, weights, _grads(B, B.build(spec, seed=7), ref_loss, B.asarray(x))


@pytest.mark.parametrize(
    ("spec_name", "k"), [("masked", 1), ("made", 1), ("masked_t", 1), ("masked_t", 2)]
)
@pytest.mark.parametrize("method", EXACT_METHODS)
def test_parameter_gradients_match_reference(backend, spec_name, method, k):
    spec = SPECS[spec_name]
    net = backend.build(spec, seed=7)
    x, weights, (want, want_x) = _case(backend.name, spec_name, k)
    loss, _ = _losses(backend, spec, method, k, weights)
    got, got_x = _grads(backend, net, loss, backend.asarray(x))
    for name in want:
        assert np.abs(got[name] - want[name]).max() < TOL, f"d/d{name} differs ({method}, k={k})"
    assert np.abs(got_x - want_x).max() < TOL
    # Every part of the net gets a gradient, the conditioner's included.
    assert all(np.abs(g).max() > 0 for name, g in got.items() if not name.endswith("_b"))


# Order 4 through one tau layer with a time input (masked_t) and through two (masked); made's
# conditioner to order 3: the order is tau's alone, and its one layer is masked_t's case.
@pytest.mark.parametrize(
    ("spec_name", "k"),
    [(s, k) for s in sorted(SPECS) for k in (1, 2, 3, 4) if (s, k) != ("made", 4)],
)
def test_value_and_tangent_gradients(backend, spec_name, k):
    """hollow_forward, trained by one ordinary reverse pass through the hand-carried series:
    its parameter and input gradients equal the dense reference's to order 4, and so does the
    gradient of the fair step's loss on (f, D_dim^k f) from ``value_and_ddim``. The fair
    loss weighs D_dim^k f as the plain loss does, so its reference gradient is the plain one's
    plus that of sum(f * f), by linearity."""
    spec = SPECS[spec_name]
    net = backend.build(spec, seed=7)
    x, weights, plain_want = _case(backend.name, spec_name, k)
    loss, _ = _losses(backend, spec, "hollow_forward", k, weights)
    opts = call_opts(spec)
    w = backend.asarray(weights)

    def fair(n, y):
        f, diag = backend.value_and_ddim(n, y, k=k, method="hollow_forward", **opts)
        return (f * f).sum() + (diag * w).sum()

    def squares(n, y):
        f = n(opts["t"], y) if opts else n(y)
        return (f * f).sum()

    x = backend.asarray(x)
    sq, sq_x = _grads(backend, net, squares, x)
    fair_want = ({n: g + sq[n] for n, g in plain_want[0].items()}, plain_want[1] + sq_x)
    for got_loss, (want, want_x) in ((loss, plain_want), (fair, fair_want)):
        got, got_x = _grads(backend, net, got_loss, x)
        for name in want:
            assert np.abs(got[name] - want[name]).max() < TOL, f"d/d{name} differs (k={k})"
        assert np.abs(got_x - want_x).max() < TOL


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_chunked_value_and_tangent_gradients(backend, spec_name, rng, monkeypatch, request):
    """hollow_forward's k = 1 runs tau in chunks of rows whose backward recomputes each one:
    with one dimension per chunk, its values and every gradient still match the reference."""
    taylor = importlib.import_module(f"impls.{backend.name}_backend.taylor")
    monkeypatch.setattr(taylor, "CHUNK_ROWS", 1)  # one dimension's rows per chunk
    if backend.name == "jax":  # the chunking is fixed at trace time: trace afresh, and after
        from impls.jax_backend import operators

        operators._compute.clear_cache()
        request.addfinalizer(operators._compute.clear_cache)
    spec = SPECS[spec_name]
    net = backend.build(spec, seed=9)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    opts = call_opts(spec)
    w = backend.asarray(rng.standard_normal((3, spec.dim)))

    def fair(n, y):
        f, div = backend.value_and_divergence(n, y, method="hollow_forward", **opts)
        return (f * f).sum() + (div * w[:, 0]).sum()

    def fair_ref(n, y):
        f = n(opts["t"], y) if opts else n(y)
        div = reference_ddim(backend, n, y, 1, opts.get("t")).sum(-1)
        return (f * f).sum() + (div * w[:, 0]).sum()

    got, got_x = _grads(backend, net, fair, x)
    want, want_x = _grads(backend, net, fair_ref, x)
    for name in want:
        assert np.abs(got[name] - want[name]).max() < TOL, f"d/d{name} differs"
    assert np.abs(got_x - want_x).max() < TOL


# Every activation in one chunk (None) and in recomputed chunks; each recomputed chunking
# (one and two dimensions' rows) with an activation of each backward family (tanh/sigmoid from
# the saved y, softplus/sin from z).
CHUNKINGS = [
    *((a, None) for a in ("tanh", "sigmoid", "softplus", "sin")),
    ("tanh", 1), ("softplus", 1), ("sigmoid", 6), ("sin", 6),
]  # fmt: skip


@pytest.mark.parametrize(("activation", "chunk_rows"), CHUNKINGS)
def test_value_and_tangent_every_activation(
    backend, activation, chunk_rows, rng, monkeypatch, request
):
    """The k = 1 node's written-out backward (a' and zt a'' from the saved y and tangent for
    tanh and sigmoid, from z for the others), in one chunk that keeps its forward's values
    (None) and in recomputed chunks of one and two dimensions' rows (batch 3): values and
    every gradient of the fair step equal the dense reference's, time input included."""
    import dataclasses

    taylor = importlib.import_module(f"impls.{backend.name}_backend.taylor")
    monkeypatch.setattr(taylor, "CHUNK_ROWS", chunk_rows)
    if backend.name == "jax":  # the chunking is fixed at trace time
        from impls.jax_backend import operators

        operators._compute.clear_cache()
        request.addfinalizer(operators._compute.clear_cache)
    spec = dataclasses.replace(SPECS["masked_t"], trans_hidden=(6, 5), activation=activation)
    net = backend.build(spec, seed=5)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    opts = call_opts(spec)
    w = backend.asarray(rng.standard_normal((3,)))

    def fair(n, y):
        f, div = backend.value_and_divergence(n, y, method="hollow_forward", **opts)
        return (f * f).sum() + (div * w).sum()

    def fair_ref(n, y):
        f = n(opts["t"], y)
        div = reference_ddim(backend, n, y, 1, opts.get("t")).sum(-1)
        return (f * f).sum() + (div * w).sum()

    got, got_x = _grads(backend, net, fair, x)
    want, want_x = _grads(backend, net, fair_ref, x)
    for name in want:
        assert np.abs(got[name] - want[name]).max() < TOL, f"d/d{name} differs"
    assert np.abs(got_x - want_x).max() < TOL


def test_chunk_rows_one_chunk_off_the_cpu(monkeypatch):
    """Issue 24, finding 8: a GPU gets one chunk whatever CHUNK_ROWS says (a chunk loop
    there launches thousands of kernels, and torch.compile unrolls it); a CPU CHUNK_ROWS."""
    torch = pytest.importorskip("torch")
    from impls.torch_backend import taylor

    monkeypatch.setattr(taylor, "CHUNK_ROWS", 4096)
    assert taylor.chunk_rows(torch.device("cuda", 0), 1 << 20) == 1 << 20
    assert taylor.chunk_rows(torch.device("cpu"), 1 << 20) == 4096
    monkeypatch.setattr(taylor, "CHUNK_ROWS", None)
    assert taylor.chunk_rows(torch.device("cpu"), 1 << 20) == 1 << 20
    jnp = pytest.importorskip("jax.numpy")
    from impls.jax_backend import taylor as jtaylor

    monkeypatch.setattr(jtaylor, "CHUNK_ROWS", 4096)
    assert jtaylor.chunk_rows(jnp.zeros(2), 1 << 20) == 4096  # a CPU array


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_divergence_gradients(backend, method, rng):
    spec = SPECS["made"]
    net = backend.build(spec, seed=2)
    x = backend.asarray(rng.standard_normal((4, spec.dim)))
    got, _ = _grads(backend, net, lambda n, y: backend.divergence(n, y, method=method).sum(), x)
    want, _ = _grads(backend, net, lambda n, y: reference_ddim(backend, n, y, 1).sum(), x)
    assert max(np.abs(got[n] - want[n]).max() for n in want) < TOL


def test_detached_conditioner_would_be_caught(rng):
    """The check above has teeth: detaching h drops the conditioner's share of the gradient."""
    torch = pytest.importorskip("torch")
    B = backend_or_skip("torch")
    spec = SPECS["masked"]
    net = B.build(spec, seed=7)
    x = B.asarray(rng.standard_normal((3, spec.dim)))

    def detached_divergence(n, y):
        h = n.conditioner(y).detach()
        y_tau = y.detach().requires_grad_()
        (diag,) = torch.autograd.grad(n.transformer(y_tau, h).sum(), y_tau, create_graph=True)
        return diag.sum()

    wrong, _ = _grads(B, net, detached_divergence, x)
    want, _ = _grads(B, net, lambda n, y: reference_ddim(B, n, y, 1).sum(), x)
    assert np.abs(wrong["cond0_w"] - want["cond0_w"]).max() > 1e-3
    assert np.abs(wrong["tau0_w"] - want["tau0_w"]).max() < TOL


@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_torch_compiled_regions_match_reference(activation, rng, monkeypatch):
    """Issue 26: eager, the k = 1 node runs its forward and backward as Inductor-compiled
    regions on a CPU (here from 1 row): values and every gradient of the fair step equal the
    dense float64 reference's, for an activation whose backward reads (y, tan) (tanh) and one
    that reads (z, y, zt) (sin), time input included; inside an enclosing torch.compile the
    regions are traced as plain code and the result is the same."""
    import dataclasses

    torch = pytest.importorskip("torch")
    from impls.torch_backend import taylor

    backend = backend_or_skip("torch")
    monkeypatch.setattr(taylor, "COMPILE_MIN_ROWS", 1)
    spec = dataclasses.replace(SPECS["masked_t"], trans_hidden=(6, 5), activation=activation)
    net = backend.build(spec, seed=5)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    w = backend.asarray(rng.standard_normal((3,)))

    def fair(n, y):
        f, div = backend.value_and_divergence(n, y, method="hollow_forward", t=0.7)
        return (f * f).sum() + (div * w).sum()

    def fair_ref(n, y):
        div = reference_ddim(backend, n, y, 1, 0.7).sum(-1)
        return (n(0.7, y) ** 2).sum() + (div * w).sum()

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got, got_x = _grads(backend, net, fair, x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs + 2  # fwd, bwd
    want, want_x = _grads(backend, net, fair_ref, x)
    outer, outer_x = _grads(backend, net, torch.compile(fair, dynamic=False), x)
    for name in want:
        assert np.abs(got[name] - want[name]).max() < TOL, f"d/d{name} differs"
        assert np.abs(outer[name] - want[name]).max() < TOL, f"d/d{name} differs (outer)"
    assert np.abs(got_x - want_x).max() < TOL
    assert np.abs(outer_x - want_x).max() < TOL


def test_torch_compiled_regions_fall_back_with_a_reason(rng, monkeypatch):
    """Where Inductor cannot compile (no C++ compiler, say), the node warns once, naming the
    failure, and runs eagerly, with the same result."""
    torch = pytest.importorskip("torch")
    from impls.torch_backend import taylor

    backend = backend_or_skip("torch")

    def no_compiler(fn, **kwargs):
        def fail(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler here")

        return fail

    monkeypatch.setattr(taylor, "COMPILE_MIN_ROWS", 1)
    monkeypatch.setattr(taylor, "_compiled", {})
    monkeypatch.setattr(taylor, "_eager_why", [])
    monkeypatch.setattr(torch, "compile", no_compiler)
    net = backend.build(SPECS["masked"], seed=4)
    x = backend.asarray(rng.standard_normal((3, SPECS["masked"].dim)))
    with pytest.warns(RuntimeWarning, match="runs eagerly: torch.compile failed.*no C\\+\\+"):
        f, div = backend.value_and_divergence(net, x, method="hollow_forward")
    assert taylor._eager_why == ["TorchDynamoException: no C++ compiler here"]
    monkeypatch.setattr(taylor, "COMPILE_MIN_ROWS", None)
    f0, div0 = backend.value_and_divergence(net, x, method="hollow_forward")
    assert torch.equal(f, f0) and torch.equal(div, div0)
