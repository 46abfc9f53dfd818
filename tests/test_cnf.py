"""Continuous normalizing flows (impls/cnf.py, impls/*/cnf.py) and the report's CNF table.

References are independent: the matrix exponential and -t tr(A) for a linear flow, autodiff
Jacobians for the data transforms, scipy's Gaussian density for the data-space NLL, counted
calls for the NFE, and the other backend on identical weights. Models are tiny and float64;
JAX shapes and configurations repeat across tests so its compilations are shared.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd
import pytest
from conftest import backend_or_skip

from impls import cnf
from impls.cnf import FlowConfig

SOLVER_PACKAGE = {"torch": "torchdiffeq", "jax": "diffrax"}
TIGHT = FlowConfig(method="hollow", rtol=1e-9, atol=1e-9)  # shared by the JAX tests
ROWS = 16


def flows(backend):
    """The backend's cnf module, or a skip naming the missing solver package."""
    pytest.importorskip(SOLVER_PACKAGE[backend.name])
    return importlib.import_module(f"impls.{backend.name}_backend.cnf")


@pytest.fixture(params=["torch", "jax"])
def setup(request):
    backend = backend_or_skip(request.param)
    return backend, flows(backend)


def _np(backend, a) -> np.ndarray:
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def _net(backend, dim: int = 3):
    return backend.build(cnf.flow_spec(dim, dtype="float64"), seed=0)


def _points(dim: int = 3, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ROWS, dim))


# --- the flow against closed forms ------------------------------------------------------------


@pytest.mark.parametrize("method", ["dense_vectorized", "dense_loop"])
def test_linear_flow_matches_the_matrix_exponential(setup, method):
    """f = A x: z = expm(t1 A) x and delta_logp = -t1 tr(A), to the solver's tolerance."""
    from scipy.linalg import expm

    backend, flow = setup
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    a_dev = backend.asarray(a)
    config = FlowConfig(method=method, rtol=1e-10, atol=1e-10, t1=0.7)
    x = rng.normal(size=(4, 3))
    z, delta_logp, stats = flow.encode(lambda t, y: y @ a_dev.T, backend.asarray(x), config)
    np.testing.assert_allclose(_np(backend, z), x @ expm(0.7 * a).T, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_np(backend, delta_logp), -0.7 * np.trace(a), atol=1e-8)
    assert int(stats["nfe_forward"]) > 6


def test_data_space_nll_of_a_still_flow_is_the_gaussian_density():
    """With f = 0 the model is N(0, I) in model space, so after standardising, the data-space
    NLL must be scipy's N(mean, diag(std^2)) density: the transform's log-det is accounted."""
    from scipy.stats import multivariate_normal

    backend = backend_or_skip("torch")
    flow = flows(backend)
    import torch

    rng = np.random.default_rng(3)
    mean, std = np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 3.0])
    transform = cnf.Standardize(mean, std)
    x = mean + std * rng.normal(size=(50, 3))
    y = torch.as_tensor(transform.forward(x))
    logp, _ = flow.log_likelihood(lambda t, v: 0 * v, y, FlowConfig(method="dense_vectorized"))
    got = cnf.nll_summary(_np(backend, logp), transform.log_det(x), 3)
    expected = -multivariate_normal(mean, np.diag(std**2)).logpdf(x).mean()
    assert got["nll_nats"] == pytest.approx(expected, rel=1e-10)
    assert got["bits_per_dim"] == pytest.approx(expected / (3 * math.log(2)), rel=1e-10)


# --- the two backends agree, and the flow inverts ----------------------------------------------


def test_torch_and_jax_give_the_same_log_likelihood_on_identical_weights():
    torch_backend, jax_backend = backend_or_skip("torch"), backend_or_skip("jax")
    x = _points()
    results = []
    for backend in (torch_backend, jax_backend):
        logp, _ = flows(backend).log_likelihood(_net(backend), backend.asarray(x), TIGHT)
        results.append(_np(backend, logp))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-7, atol=1e-7)
    assert np.ptp(results[0]) > 0.1  # the rows differ, so agreement is not a coincidence


def test_sampling_then_evaluating_round_trips(setup):
    """z -> x (sample) -> z (encode): the same z, and the same log-density both ways."""
    backend, flow = setup
    net = _net(backend)
    x, logp_sampled = flow.sample(net, ROWS, TIGHT, seed=4)
    z, delta_logp, _ = flow.encode(net, x, TIGHT)
    logp, _ = flow.log_likelihood(net, x, TIGHT)
    np.testing.assert_allclose(_np(backend, logp), _np(backend, logp_sampled), atol=1e-6)
    back, delta_back, _ = flow.decode(net, z, TIGHT)
    np.testing.assert_allclose(_np(backend, back), _np(backend, x), atol=1e-6)
    np.testing.assert_allclose(_np(backend, delta_back), _np(backend, delta_logp), atol=1e-6)
    assert np.abs(_np(backend, z) - _np(backend, x)).max() > 0.1  # the flow moved the points


@pytest.mark.parametrize("method", cnf.STOCHASTIC_TRACES)
def test_stochastic_probes_are_fixed_within_a_solve_so_the_flow_inverts(method):
    """FFJORD draws e once per solve: with one seed, decode undoes encode's log-density too."""
    backend = backend_or_skip("torch")
    flow = flows(backend)
    net = _net(backend)
    config = FlowConfig(method=method, rtol=1e-9, atol=1e-9)
    x = backend.asarray(_points())
    z, delta, _ = flow.encode(net, x, config, seed=7)
    back, delta_back, _ = flow.decode(net, z, config, seed=7)
    np.testing.assert_allclose(_np(backend, back), _np(backend, x), atol=1e-6)
    np.testing.assert_allclose(_np(backend, delta_back), _np(backend, delta), atol=1e-6)
    _, other, _ = flow.encode(net, x, config, seed=8)
    assert np.abs(_np(backend, other) - _np(backend, delta)).max() > 1e-4


def test_hutchpp_flow_is_exact_once_its_sketch_spans_every_dimension(setup):
    """Hutch++ with 3d products sketches all of R^d, so the flow's log-likelihood is the exact
    one; with 3 it is an estimate that moves with the seed."""
    backend, flow = setup
    net, x = _net(backend), backend.asarray(_points())
    exact, _ = flow.log_likelihood(net, x, TIGHT)
    spanning = FlowConfig(method="hutchpp", n_matvecs=9, rtol=1e-9, atol=1e-9)
    full, _ = flow.log_likelihood(net, x, spanning, seed=3)
    np.testing.assert_allclose(_np(backend, full), _np(backend, exact), atol=1e-6)
    cheap = FlowConfig(method="hutchpp", rtol=1e-9, atol=1e-9)
    estimates = [_np(backend, flow.log_likelihood(net, x, cheap, seed=s)[0]) for s in (3, 4)]
    assert np.abs(estimates[0] - estimates[1]).max() > 1e-4


# --- NFE counts ---------------------------------------------------------------------------------


def test_torch_counts_evaluations_and_backward_vjps():
    """nfe_forward = calls of the dynamics in the solve; nfe_backward = its VJPs in backward,
    which with the adjoint are the adjoint solve's evaluations (counted here as f calls)."""
    backend = backend_or_skip("torch")
    flow = flows(backend)
    import torch

    class Field(torch.nn.Module):
        """A plain callable f(t, x) with a parameter, counting its calls: one per evaluation
        of the dynamics, since dx/dt is the f of the Hutchinson VJP's own forward."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([[0.3, -1.0], [1.0, 0.2]]).double())
            self.calls = 0

        def forward(self, t, y):
            self.calls += 1
            return torch.tanh(y @ self.weight.T)

    x = backend.asarray(_points(2))
    for adjoint in (False, True):
        field = Field()
        loss, stats = flow.nll(field, x, FlowConfig(method="hutchinson", adjoint=adjoint))
        assert field.calls == stats["nfe_forward"] and stats["nfe_backward"] == 0
        field.calls = 0
        loss.backward()
        assert stats["nfe_backward"] > 0 and field.weight.grad is not None
        if adjoint:  # the adjoint solve evaluates the dynamics, then takes its VJP
            assert field.calls == stats["nfe_backward"]
        else:  # reverse mode walks the recorded graph, calling nothing
            assert field.calls == 0 and stats["nfe_backward"] <= stats["nfe_forward"]


def test_jax_nfe_is_six_per_step_plus_one():
    """diffrax reports steps; Dopri5/Tsit5 evaluate f 6 times per step attempt plus once.
    A host callback in f counts the real calls (one per evaluation: f is the VJP's forward)."""
    backend = backend_or_skip("jax")
    flow = flows(backend)
    import jax
    import jax.numpy as jnp

    calls = [0]

    def count():
        calls[0] += 1

    def f(t, y):
        jax.debug.callback(count)
        return jnp.tanh(3 * y[:, ::-1]) * jnp.sin(5 * t)

    x = backend.asarray(_points(2))
    for solver in ("dopri5", "tsit5"):
        calls[0] = 0
        config = FlowConfig(method="hutchinson", solver=solver, rtol=1e-7, atol=1e-7, t1=2.0)
        _, _, stats = flow.encode(f, x, config)
        jax.effects_barrier()
        assert int(stats["n_steps"]) > 5 and int(stats["n_rejected"]) > 0
        # one call of f per evaluation: dx/dt is the f of the Hutchinson VJP's own forward
        assert calls[0] == int(stats["nfe_forward"]) == 6 * int(stats["n_steps"]) + 1


# --- training ------------------------------------------------------------------------------------


def test_training_is_the_same_in_both_backends():
    """Identical weights, batches (one seed) and an exact divergence: three Adam steps give
    the same losses, which they could not if either backend's gradient were off."""
    torch_backend, jax_backend = backend_or_skip("torch"), backend_or_skip("jax")
    pytest.importorskip("optax")
    data = cnf.load_dataset("8gaussians", n_train=64, n_test=8, seed=1)
    config = FlowConfig(method="hollow", rtol=1e-9, atol=1e-9)
    runs = []
    for backend in (torch_backend, jax_backend):
        net = backend.build(cnf.flow_spec(2, dtype="float64"), seed=0)
        runs.append(flows(backend).train(net, data.train, config, steps=3, batch=16, lr=0.05))
    torch_run, jax_run = runs
    np.testing.assert_allclose(torch_run.losses, jax_run.losses, rtol=1e-6)
    assert abs(torch_run.losses[2] - torch_run.losses[0]) > 1e-3  # the steps changed the model
    assert torch_run.iterations == jax_run.iterations == 3
    assert all(n > 6 for n in torch_run.nfe_forward + jax_run.nfe_forward)
    assert all(n is not None and n > 0 for n in torch_run.nfe_backward)
    # JAX's backward count is not known, and is not assumed equal to the forward one
    assert jax_run.nfe_backward == [None] * 3 and flows(jax_backend).NFE_KIND == "derived"


def test_training_stops_on_its_wall_clock_budget():
    backend = backend_or_skip("torch")
    flow = flows(backend)
    data = cnf.load_dataset("moons", n_train=64, n_test=8)
    net = backend.build(cnf.flow_spec(2), seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    result = flow.train(net, data.train, FlowConfig(), budget_s=0.2, batch=8)
    assert result.iterations >= 1 and result.seconds >= 0.2
    assert result.field is net and np.isfinite(result.losses).all()
    assert any(not (p == q).all() for p, q in zip(before, net.parameters(), strict=True))
    logp = flow.held_out_log_likelihood(net, data.test, FlowConfig(), batch=3)
    summary = data.nll(logp)
    assert logp.shape == (8,) and np.isfinite(summary["nll_nats"])


# --- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", cnf.TOY_DATASETS)
def test_toys_are_seeded_2d_samples(name):
    a = cnf.load_dataset(name, n_train=300, n_test=50, seed=2)
    b = cnf.load_dataset(name, n_train=300, n_test=50, seed=2)
    c = cnf.load_dataset(name, n_train=300, n_test=50, seed=3)
    assert a.train.shape == (300, 2) and a.test.shape == (50, 2) and a.dim == 2
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.train, c.train)
    assert np.isfinite(a.train).all() and 1.0 < a.train.std() < 5.0
    np.testing.assert_array_equal(a.test_log_det, 0.0)


def test_digits_are_dequantised_logit_pixels():
    pytest.importorskip("sklearn")
    data = cnf.load_dataset("digits", seed=0)
    assert data.dim == 64 and len(data.train) + len(data.test) == 1797
    pixels = data.transform.inverse(data.test)
    assert (pixels > 0).all() and (pixels < cnf.DIGITS_LEVELS).all()
    np.testing.assert_allclose(data.test_log_det, data.transform.log_det(pixels), rtol=1e-12)
    # every pixel is an integer plus U(0, 1) noise
    assert 0.4 < (pixels - np.floor(pixels)).mean() < 0.6


@pytest.mark.parametrize(
    "transform",
    [
        cnf.Logit(levels=17.0),
        cnf.Standardize(np.array([1.0, -2.0, 0.5]), np.array([0.5, 2.0, 3.0])),
        cnf.Identity(),
    ],
    ids=["logit", "standardize", "identity"],
)
def test_transforms_invert_and_their_log_det_is_the_jacobians(transform):
    torch = pytest.importorskip("torch")
    from torch.func import jacrev

    x = np.random.default_rng(0).uniform(0.5, 16.5, size=(6, 3))
    y = transform.forward(x)
    np.testing.assert_allclose(transform.inverse(y), x, rtol=1e-12)
    rows = torch.as_tensor(x)
    jac = [jacrev(lambda r: transform.forward(r[None], torch)[0])(row) for row in rows]
    expected = [float(torch.linalg.slogdet(j)[1]) for j in jac]
    np.testing.assert_allclose(transform.log_det(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np_of(transform.log_det(rows, torch)), expected, rtol=1e-12)


def _np_of(tensor) -> np.ndarray:
    return tensor.detach().numpy()


def test_npy_arrays_load_split_and_standardise(tmp_path):
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(200, 4))
    np.save(tmp_path / "power.npy", data)
    loaded = cnf.load_npy(tmp_path / "power.npy", test_fraction=0.25, seed=1)
    assert loaded.name == "power" and loaded.train.shape == (150, 4) and loaded.test.shape[0] == 50
    np.testing.assert_allclose(loaded.train.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(loaded.train.std(0), 1.0, rtol=1e-12)
    back = loaded.transform.inverse(loaded.test)
    assert np.isin(back.round(10), data.round(10)).all()


def test_batches_are_full_and_cover_each_epoch():
    data = np.arange(10.0)[:, None]
    source = cnf.batches(data, 3, np.random.default_rng(0))
    epoch = [next(source) for _ in range(3)]
    assert all(b.shape == (3, 1) for b in epoch)
    assert len(np.unique(np.concatenate(epoch))) == 9


# --- bad input ----------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; available: moons, 8gaussians"):
        cnf.load_dataset("mnist")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"method": "hollow_forward"}, "unknown method 'hollow_forward' for a flow; available"),
        ({"method": "exact"}, "unknown method 'exact'"),
        ({"n_probes": 0}, "n_probes must be a positive int"),
        ({"noise": "uniform"}, "unknown noise"),
        ({"method": "hutchpp", "noise": "rademacher"}, "unknown noise 'rademacher'.*gaussian"),
        ({"method": "hutchpp", "n_matvecs": 2}, r"n_matvecs must be an int >= 3 \(Hutch\+\+\)"),
        ({"solver": "euler"}, "unknown solver 'euler'; available: dopri5, tsit5"),
        ({"rtol": 0.0}, "rtol must be in"),
        ({"t1": -1.0}, "t1 must be a finite number > 0"),
        ({"max_steps": 0}, "max_steps must be a positive int"),
    ],
)
def test_bad_configs_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        FlowConfig(**kwargs)


def test_bad_flow_calls_name_the_problem(setup):
    backend, flow = setup
    net = _net(backend)
    x = backend.asarray(_points())
    with pytest.raises(ValueError, match="method 'hollow' needs a HollowNet"):
        flow.encode(lambda t, y: y, x, FlowConfig(method="hollow"))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3\)"):
        flow.encode(net, backend.asarray(_points(2)), TIGHT)
    with pytest.raises(TypeError, match="dtype"):
        flow.encode(net, backend.asarray(_points().astype("float32")), TIGHT)
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.encode(net, backend.asarray(np.full((2, 3), np.nan)), TIGHT)
    with pytest.raises(TypeError, match="FlowConfig"):
        flow.encode(net, x, {"method": "hollow"})
    with pytest.raises(ValueError, match="give steps"):
        flow.train(net, _points(), TIGHT)
    if backend.name == "torch":
        with pytest.raises(ValueError, match="solver 'tsit5' is not available in torchdiffeq"):
            flow.encode(net, x, FlowConfig(solver="tsit5"))


def test_bad_npy_files_are_refused(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"expected an \(n, d\) array"):
        cnf.load_npy(tmp_path / "flat.npy")
    np.save(tmp_path / "nan.npy", np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        cnf.load_npy(tmp_path / "nan.npy")
    with pytest.raises(ValueError, match=r"expected a \.npy file"):
        cnf.load_npy(tmp_path / "data.csv")


# --- the report's CNF table ---------------------------------------------------------------------

# Golden points (backend torch, one CPU, moons d=2 batch 32): method -> (ms per iteration,
# NFE fwd, NFE bwd, eval ms) for "iteration" items, and (NLL, bits/dim, loglik std,
# iterations) for "budget" items. dense_loop timed out; nothing ran a budget for it.
ITERATION = {
    ("hollow", None): (30.0, 26, 25, 4.0),
    ("hutchinson", 1): (24.0, 32, 31, 3.0),
    ("dense_vectorized", None): (90.0, 26, 25, 12.0),
    ("dense_loop", None): "timeout",
}
BUDGET = {
    ("hollow", None): (2.50, 2.50 / (2 * math.log(2)), None, 2000),
    ("hutchinson", 1): (2.75, 2.75 / (2 * math.log(2)), 0.04, 2500),
}


def _cnf_point(item: str, method: str, probes, values, name: str) -> dict:
    info = {
        "backend": "torch", "device": "cpu", "device_name": "Test CPU", "workload": "cnf",
        "method": method, "model": "hollownet", "d": 2, "batch": 32, "k": 1,
        "n_probes": probes, "mode": "train", "dtype": "float32", "matmul_precision": "highest",
        "n_params": 100, "flops": 1000, "cnf_item": item, "dataset": "moons",
        "status": "ok", "reason": None,
    }  # fmt: skip
    stats = None
    if isinstance(values, str):
        info["status"], info["reason"] = values, "ran past the per-point limit"
    elif item == "iteration":
        ms, fwd, bwd, eval_ms = values
        info |= {"nfe_forward": fwd, "nfe_backward": bwd, "loglik_eval_ms": eval_ms}
        stats = {"median": ms / 1e3, "min": ms / 1e3, "max": ms / 1e3, "mean": ms / 1e3}
    else:
        nll, bpd, std, iterations = values
        info |= {"nll_nats": nll, "bits_per_dim": bpd, "loglik_std": std, "budget_s": 60.0}
        info |= {"train_iterations": iterations, "loglik_eval_ms": 5.0}
        stats = {"median": 0.005, "min": 0.005, "max": 0.005, "mean": 0.005}
    return {"name": name, "fullname": f"bench/test_cnf.py::{name}", "params": {},
            "extra_info": info, "stats": stats}  # fmt: skip


def _cnf_rows(tmp_path, benchmarks: list, not_run: list) -> pd.DataFrame:
    """The report's CNF table of a results file holding these points."""
    pytest.importorskip("pandas")
    import json

    from reports.load import load_results
    from reports.tables import cnf_table

    doc = {
        "machine_info": {"node": "alpha", "hollowbench": {"cpu": "Test CPU"}},
        "commit_info": {},
        "benchmarks": benchmarks,
        "datetime": "2026-01-01T00:00:00",
        "version": "4.0.0",
        "hollowbench": {"not_run": not_run},
    }
    path = tmp_path / "cnf.json"
    path.write_text(json.dumps(doc))
    return cnf_table(load_results([str(path)]))


def test_cnf_table_compares_exact_and_stochastic_traces(tmp_path):
    benchmarks, not_run = [], []
    for item, table in (("iteration", ITERATION), ("budget", BUDGET)):
        for (method, probes), values in table.items():
            point = _cnf_point(item, method, probes, values, f"test_cnf[{item}-{method}]")
            (not_run if isinstance(values, str) else benchmarks).append(point)
    got = _cnf_rows(tmp_path, benchmarks, not_run).set_index("method")

    assert list(got.index) == ["hollow", "dense_vectorized", "dense_loop", "hutchinson-1"]
    for (method, probes), values in ITERATION.items():
        label = method if probes is None else f"{method}-{probes}"
        row = got.loc[label]
        if isinstance(values, str):
            assert row["ms / iteration"] == values == row["NFE fwd"]
            continue
        ms, fwd, bwd, eval_ms = values
        assert row["ms / iteration"] == pytest.approx(ms)
        assert (row["NFE fwd"], row["NFE bwd"]) == (fwd, bwd)
        assert row["loglik eval ms"] == pytest.approx(eval_ms)
        assert row["ms vs hutchinson-1"] == pytest.approx(ms / ITERATION[("hutchinson", 1)][0])
        assert row["trace"] == ("stochastic" if method == "hutchinson" else "exact")
    hollow, hutch = got.loc["hollow"], got.loc["hutchinson-1"]
    assert hollow["held-out NLL (nats)"] == pytest.approx(2.50)
    assert hollow["bits/dim"] == pytest.approx(2.50 / (2 * math.log(2)))
    assert hollow["loglik std across probe seeds (nats)"] == "exact"
    assert hutch["loglik std across probe seeds (nats)"] == pytest.approx(0.04)
    assert hutch["iterations in budget"] == 2500
    # no budget point for the dense methods: missing, never zero
    for label in ("dense_vectorized", "dense_loop"):
        assert pd.isna(got.loc[label, "held-out NLL (nats)"])
        assert pd.isna(got.loc[label, "loglik std across probe seeds (nats)"])
    assert got.loc["dense_loop", "ms vs hutchinson-1"] == "timeout"


def test_cnf_table_says_how_nfe_were_known(tmp_path):
    """Counted NFE show as such; a JAX file from before ``nfe_kind`` shows its forward NFE as
    derived and its backward NFE, then assumed equal to the forward, not at all."""
    counted = _cnf_point("iteration", "hollow", None, (30.0, 26, 25, 4.0), "test_cnf[torch]")
    counted["extra_info"]["nfe_kind"] = "counted"
    legacy = _cnf_point("iteration", "hollow", None, (20.0, 31, 31, 2.0), "test_cnf[jax]")
    legacy["extra_info"]["backend"] = "jax"
    got = _cnf_rows(tmp_path, [counted, legacy], []).set_index("backend")
    assert got.loc["torch", "NFE kind"] == "counted" and got.loc["torch", "NFE bwd"] == 25
    assert got.loc["jax", "NFE kind"] == "derived" and got.loc["jax", "NFE fwd"] == 31
    assert pd.isna(got.loc["jax", "NFE bwd"])
