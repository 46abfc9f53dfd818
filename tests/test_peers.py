"""The peers (bench.peers: forward-mode AD of the transformer at h fixed) equal hollow_forward
and a dense float64 reference: values, divergence, and the fair step's gradients into every
parameter and x. And perf_check's table and bench.account run and count right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _reference import reference_ddim
from conftest import SPECS, call_opts

from bench import account, peers, perf_check

TOL = 1e-10
ROOT = Path(__file__).parents[1]


def _grads(B, net, loss_fn, x) -> tuple[dict, np.ndarray]:
    """{param name: d loss / d param} and d loss / dx, as numpy."""
    if B.name == "torch":
        x = x.clone().requires_grad_()
        net.zero_grad()
        loss_fn(net, x).backward()
        return {n: p.grad.numpy().copy() for n, p in net.params.items()}, x.grad.numpy()
    import jax

    g_net, g_x = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(net, x)
    return {n: np.asarray(v) for n, v in g_net.params.items()}, np.asarray(g_x)


def _fair_loss(value_and_div):
    """The fair train step's loss (operators.step): mean(f^2) + sum(divergence) / batch."""

    def loss(net, x):
        f, div = value_and_div(net, x)
        return (f**2).mean() + div.sum() / x.shape[0]

    return loss


def _candidates(B, spec):
    """name -> fn(net, x) -> (f, divergence): ours, the reference, each peer."""
    opts = call_opts(spec)

    def ours(net, x):
        return B.value_and_divergence(net, x, method="hollow_forward", **opts)

    def dense(net, x):
        return net(*([opts["t"]] if opts else []), x), reference_ddim(
            B, net, x, 1, opts.get("t")
        ).sum(-1)

    t = {} if not opts else {"t": B.asarray(np.asarray(opts["t"]))}
    out = {"hollow_forward": ours, "reference": dense}
    for name in peers.PEERS[B.name]:
        fn = peers.value_and_divergence(B.name, name)
        out[name] = lambda net, x, fn=fn: fn(net, x, **t)
    return out


@pytest.mark.parametrize("spec_name", ["masked", "made", "masked_t"])
def test_peers_equal_ours_and_reference(backend, spec_name, rng):
    spec = SPECS[spec_name]
    net = backend.build(spec, seed=7)
    x = backend.asarray(rng.standard_normal((3, spec.dim)))
    found = {}
    for name, fn in _candidates(backend, spec).items():
        f, div = fn(net, x)
        grads, g_x = _grads(backend, net, _fair_loss(fn), x)
        found[name] = (backend.to_numpy(f), backend.to_numpy(div), grads, g_x)
    want = found["reference"]
    for name, (f, div, grads, g_x) in found.items():
        assert np.abs(f - want[0]).max() < TOL, name
        assert np.abs(div - want[1]).max() < TOL, name
        for p in want[2]:
            assert np.abs(grads[p] - want[2][p]).max() < TOL, f"{name}: d/d{p}"
        assert np.abs(g_x - want[3]).max() < TOL, name
    # The conditioner's share reaches the peers' gradients: theirs are not zero.
    assert all(np.abs(g).max() > 0 for p, g in found["peer_jvp"][2].items() if "cond" in p)


def test_perf_check_table_gives_the_fastest_peer():
    rows = [
        (8, "torch", "eager", "hollow_forward", 2.0, None),
        (8, "torch", "eager", "hutchinson", 4.0, None),
        (8, "torch", "eager", "peer_jvp", 8.0, None),
        (8, "torch", "eager", "peer_fwad", 5.0, None),
        (8, "torch", "compile", "hollow_forward", 1.0, 3.0),
    ]
    text = perf_check.table(rows, ["hollow_forward"])
    assert "| 5.00 (peer_fwad) | 0.40 |" in text
    # No compiled peer: the fastest eager one, marked.
    assert "| 5.00* (peer_fwad) | 0.20 |" in text


def test_perf_check_table_puts_plain_eager_beside_the_compiled_step():
    """--plain-eager's row (the k = 1 node op by op) gives its own / the compiled step's time
    and pairs with the eager Hutchinson-1 step unmarked: nothing was refused."""
    rows = [
        (8, "torch", "eager", "hollow_forward", 2.0, None),
        (8, "torch", "eager", "hutchinson", 4.0, None),
        (8, "torch", "compile", "hollow_forward", 1.6, 3.0),
        (8, "torch", perf_check.PLAIN, "hollow_forward", 2.4, None),
    ]
    text = perf_check.table(rows, ["hollow_forward"])
    assert "| 8 | torch | eager-plain | hollow_forward | 2.40 | 4.00 | 0.60 |  | 1.50 |" in text
    assert "| 8 | torch | compile | hollow_forward | 1.60 | 4.00* | 0.40 |  | 1.25 |" in text


def test_account_runs_and_prints_categories():
    """In a fresh process, so that the account turns XLA's thunk traces on before JAX starts."""
    pytest.importorskip("jax")
    args = ["--dims", "4", "--batch", "8", "--calls", "1", "--variants", "eager,jit"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.account", *args],
        env=os.environ | {"XLA_FLAGS": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    out = run.stdout
    for head in ("torch eager hollow_forward d=4", "jax jit hutchinson d=4", "est. ms"):
        assert head in out
    for cat in account.CATEGORIES:
        assert f"| {cat} |" in out
    assert "over rows: weight gradient" in out
    assert "XLA thunks traced" in out and "none traced" not in out


def test_gemm_flops_and_bytes():
    flops, nbytes = account.gemm_cost("addmm", [[64], [32, 16], [16, 64]])
    assert flops == 2 * 32 * 16 * 64
    assert nbytes == (64 + 32 * 16 + 16 * 64 + 32 * 64) * account.ITEM
    assert account.gemm_cost("baddbmm", [[4, 1, 8], [4, 5, 3], [4, 3, 8]])[0] == 2 * 4 * 5 * 3 * 8
    item = account.ITEM
    assert account.op_bytes("add", [[8, 4], [4], []]) == (32 + 4 + 32) * item
    assert account.op_bytes("add_", [[8, 4], [4], []]) == (32 + 4 + 32) * item
    assert account.op_bytes("copy_", [[8, 4], [8, 4], []]) == 64 * item
    assert account.op_bytes("view", [[8, 4], []]) == 0


def test_torch_profile_counts_a_known_gemm():
    torch = pytest.importorskip("torch")
    a, b = torch.ones(32, 16), torch.ones(16, 64)
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.mm(a, b)
    tallies, _ = account.torch_tallies(prof.events())
    assert tallies["GEMM"].flops == 2 * 32 * 16 * 64


def test_hlo_dots_are_found_with_their_flops():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    a, b = jnp.ones((32, 16)), jnp.ones((32, 64))
    text = jax.jit(lambda a, b: jnp.tanh(a.T @ b)).lower(a, b).compile().as_text()
    comps, entry = account.parse_hlo(text)
    types = {i.name: i.type for body in comps.values() for i in body}
    found = [d for ins in comps[entry] for d in account.dots(ins, comps, types)]
    assert [d.flops for d in found] == [2 * 16 * 32 * 64]
    assert found[0].contract == ((0,), (0,))
    cats = {account.hlo_category(ins, comps) for ins in comps[entry]}
    assert "GEMM" in cats
