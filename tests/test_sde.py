"""Fokker-Planck matching (impls/sde.py, impls/*/sde.py): the OU targets against scipy, the
residual of the true OU fields (zero), the log-density form against the density form by dense
autodiff, hollow against dense, torch against JAX, parameter gradients, a short fit sampled
with torchsde / diffrax, bad input, and the report's cost table on golden input.

The hollow route on an OU process: no HollowNet realises the linear OU drift exactly (its
transformer is a tanh MLP), so that case gives the true fields as DimwiseFields with their
closed-form D_dim callables, which the hollow route consumes as it consumes a HollowNet's
(D_dim f, D_dim g, D_dim^2 g, then the same assembly); random HollowNets are then checked
against the dense route and against the density form, which share no code with the hollow
operators.
"""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from conftest import BACKEND_NAMES, backend_or_skip

from impls import HollowSpec
from impls.sde import (
    ROUTES,
    DimwiseField,
    UserTarget,
    ou_mixture,
    ou_process,
    training_batch,
)

OU = ou_process(
    3, theta=(0.5, 1.0, 2.0), mu=(0.1, -0.2, 0.3), sigma=(0.5, 1.0, 1.5),
    mean0=(1.0, -1.0, 0.5), std0=(0.3, 0.6, 1.0), t_span=(0.2, 1.5),
)  # fmt: skip
MIXTURE = ou_mixture(
    3, weights=(0.2, 0.5, 0.3), means0=[[-1.0, 0.0, 1.0], [0.5, 0.5, -0.5], [2.0, -1.0, 0.0]],
    stds0=(0.3, 0.5, 0.8), theta=(0.7, 1.3, 0.4), mu=(0.0, 0.5, -0.5), sigma=(0.6, 1.1, 0.9),
)  # fmt: skip
TARGETS = {"ou": OU, "mixture": MIXTURE}
NETS = {
    "masked": HollowSpec(
        dim=3, d_h=3, cond_hidden=(4,), trans_hidden=(8, 8), time_dependent=True,
        dtype="float64",
    ),
    "made": HollowSpec(
        dim=3, d_h=2, conditioner="made", cond_hidden=(3,), trans_hidden=(6,),
        time_dependent=True, activation="softplus", dtype="float64",
    ),
}  # fmt: skip
# Small, so that JAX compiles the two routes' gradients in seconds.
GRADIENT_NET = HollowSpec(
    dim=3, d_h=2, cond_hidden=(), trans_hidden=(6,), time_dependent=True, dtype="float64"
)
ROUND_OFF = 1e-12


def _sde(backend):
    return importlib.import_module(f"impls.{backend.name}_backend.sde")


def _xp(backend):
    return importlib.import_module("torch" if backend.name == "torch" else "jax.numpy")


def _np(backend, a) -> np.ndarray:
    return np.asarray(backend.to_numpy(a), dtype=np.float64)


def _points(backend, target, n: int = 6, seed: int = 0):
    t, x = training_batch(target, n, np.random.default_rng(seed))
    return backend.asarray(t), backend.asarray(x)


def _nets(backend, spec: HollowSpec):
    return backend.build(spec, seed=0), backend.build(spec, seed=1)


# --- the targets -----------------------------------------------------------------------------


def test_ou_marginals_against_scipy():
    """Means and variances against the moment ODEs m' = -theta (m - mu), v' = -2 theta v +
    sigma^2 integrated by scipy; the density at t0 against scipy's Gaussian mixture."""
    from scipy.integrate import solve_ivp
    from scipy.stats import norm

    target = MIXTURE
    t0, t1 = target.t_span
    theta, mu, sigma = target.theta, target.mu, target.sigma

    def moments(t, y):
        m, v = y[:9].reshape(3, 3), y[9:].reshape(3, 3)
        return np.concatenate([(-theta * (m - mu)).ravel(), (-2 * theta * v + sigma**2).ravel()])

    y0 = np.concatenate([target.means0.ravel(), (target.stds0**2).ravel()])
    sol = solve_ivp(moments, (t0, t1), y0, rtol=1e-11, atol=1e-12).y[:, -1]
    m, v = sol[:9].reshape(3, 3), sol[9:].reshape(3, 3)
    w = target.weights
    np.testing.assert_allclose(target.mean(t1), w @ m, rtol=1e-8)
    np.testing.assert_allclose(target.variance(t1), w @ (v + m**2) - (w @ m) ** 2, rtol=1e-8)

    x = np.random.default_rng(0).standard_normal((5, 3))
    dens = sum(
        wk * norm.pdf(x, mk, sk).prod(-1)
        for wk, mk, sk in zip(w, target.means0, target.stds0, strict=True)
    )
    np.testing.assert_allclose(target.log_prob(np.full(5, t0), x, np), np.log(dens), rtol=1e-12)

    draws = target.sample(np.full(200_000, t1), np.random.default_rng(1))
    se = np.sqrt(target.variance(t1) / draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - target.mean(t1)) < 5 * se)


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS)
def test_closed_form_terms_match_autodiff(backend, target):
    """d_t log p, the score and the Hessian diagonal in closed form against autodiff of
    log p, the route a UserTarget takes."""
    sde = _sde(backend)
    t, x = _points(backend, target)
    closed = sde.target_terms(target, t, x)
    auto = sde.target_terms(target, t, x, autodiff=True)
    for name, a, b in zip(("d_t log p", "score", "hessian diagonal"), closed, auto, strict=True):
        np.testing.assert_allclose(_np(backend, a), _np(backend, b), rtol=1e-11, atol=1e-12,
                                   err_msg=name)  # fmt: skip


# --- the residual ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS)
def test_residual_of_the_true_ou_fields_is_zero(backend, route, target):
    """The OU drift -theta (x - mu) and diffusion sigma solve the Fokker-Planck equation of
    their own marginals (one Gaussian, or a mixture pushed through the same flow)."""
    drift, diffusion = target.fields(_xp(backend))
    t, x = _points(backend, target, n=16)
    r = _np(backend, _sde(backend).fp_residual(drift, diffusion, target, t, x, route=route))
    scale = np.abs(_np(backend, _sde(backend).target_terms(target, t, x)[0])).max()
    assert np.abs(r).max() <= ROUND_OFF * max(scale, 1.0), np.abs(r).max()


def test_residual_detects_wrong_fields(backend):
    """The zero above is not vacuous: a diffusion 10% off leaves a residual of order 1."""
    drift, diffusion = OU.fields(_xp(backend))
    wrong = DimwiseField(lambda t, x: 1.1 * diffusion(t, x), diffusion.ddim, OU.dim)
    t, x = _points(backend, OU, n=16)
    r = _np(backend, _sde(backend).fp_residual(drift, wrong, OU, t, x, route="hollow"))
    assert np.abs(r).max() > 0.05


def test_log_form_matches_the_density_form():
    """The residual's log-density expansion against the Fokker-Planck equation as written,
    (d_t p + sum_i d_i (f_i p) - 1/2 sum_i d_i^2 (g_i^2 p)) / p, with every derivative of the
    products taken by dense autodiff (full per-sample Jacobians and Hessians)."""
    torch = pytest.importorskip("torch")
    from torch.func import grad, hessian, jacrev, vmap

    backend = backend_or_skip("torch")
    f, g = _nets(backend, NETS["masked"])
    t, x = _points(backend, MIXTURE, n=5)

    def p(s, y):
        return torch.exp(MIXTURE.log_prob(s[None], y[None], torch))[0]

    def density_form(s, y):
        flux = jacrev(lambda z: f(s, z[None])[0] * p(s, z))(y)
        spread = hessian(lambda z: g(s, z[None])[0] ** 2 * p(s, z))(y)
        idx = torch.arange(y.shape[0])
        dt_p = grad(p)(s, y)
        return (dt_p + flux[idx, idx].sum() - 0.5 * spread[idx, idx, idx].sum()) / p(s, y)

    expected = vmap(density_form)(t, x)
    got = _sde(backend).fp_residual(f, g, MIXTURE, t, x, route="hollow")
    np.testing.assert_allclose(_np(backend, got), _np(backend, expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("net", NETS, ids=NETS)
def test_hollow_and_dense_routes_agree(backend, net):
    """On random HollowNets: each field's [f, D_dim f, D_dim^2 f] and the residual."""
    sde = _sde(backend)
    f, g = _nets(backend, NETS[net])
    t, x = _points(backend, MIXTURE)
    for field in (f, g):
        hollow = sde.dimwise_jet(field, t, x, 2, "hollow")
        dense = sde.dimwise_jet(field, t, x, 2, "dense")
        for k, (a, b) in enumerate(zip(hollow, dense, strict=True)):
            np.testing.assert_allclose(_np(backend, a), _np(backend, b), rtol=1e-10,
                                       atol=1e-12, err_msg=f"order {k}")  # fmt: skip
    rh, rd = (sde.fp_residual(f, g, MIXTURE, t, x, route=r) for r in ROUTES)
    np.testing.assert_allclose(_np(backend, rh), _np(backend, rd), rtol=1e-10, atol=1e-10)


def _parameter_gradients(backend, f, g, t, x, route) -> list[np.ndarray]:
    sde = _sde(backend)
    if backend.name == "torch":
        import torch

        loss = sde.fp_loss(f, g, MIXTURE, t, x, route=route)
        params = [*f.parameters(), *g.parameters()]
        return [_np(backend, p) for p in torch.autograd.grad(loss, params)]
    import jax

    loss = jax.jit(jax.grad(lambda a, b: sde.fp_loss(a, b, MIXTURE, t, x, route=route), (0, 1)))
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(loss(f, g))]


def test_parameter_gradients_agree_across_routes(backend):
    """d(mean r^2)/d(theta) of both nets, hollow against dense: the hollow route keeps the
    conditioner's share of the gradient (a detached h would drop it)."""
    f, g = _nets(backend, GRADIENT_NET)
    t, x = _points(backend, MIXTURE)
    hollow, dense = (_parameter_gradients(backend, f, g, t, x, r) for r in ROUTES)
    assert len(hollow) == len(dense) > 0
    for a, b in zip(hollow, dense, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert any(np.abs(a).max() > 0 for a in hollow[:2])  # the conditioner's weights move


def test_user_target_gives_the_closed_form_residual(backend):
    """A UserTarget (log p only, differentiated by the backend) against the closed forms."""
    xp = _xp(backend)
    user = UserTarget(3, lambda t, x: MIXTURE.log_prob(t, x, xp), t_span=MIXTURE.t_span)
    f, g = _nets(backend, NETS["masked"])
    t, x = _points(backend, MIXTURE)
    sde = _sde(backend)
    np.testing.assert_allclose(
        _np(backend, sde.fp_residual(f, g, user, t, x)),
        _np(backend, sde.fp_residual(f, g, MIXTURE, t, x)),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("route", ROUTES)
def test_torch_and_jax_agree(route):
    """The same spec and seeds give the same weights in both backends, hence the residual."""
    out = []
    for name in BACKEND_NAMES:
        backend = backend_or_skip(name)
        f, g = _nets(backend, NETS["made"])
        t, x = _points(backend, MIXTURE)
        out.append(_np(backend, _sde(backend).fp_residual(f, g, MIXTURE, t, x, route=route)))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-10, atol=1e-10)


# --- fit and sample --------------------------------------------------------------------------

FIT_TARGET = ou_process(2, theta=1.0, mu=(1.0, -0.5), sigma=0.8, mean0=(-1.0, 1.0), std0=0.5)
FIT_SPEC = HollowSpec(
    dim=2, d_h=4, cond_hidden=(8,), trans_hidden=(32,), time_dependent=True, dtype="float64"
)
N_PATHS = 4000
# Measured (both backends): means within 0.015 of the closed form, variances within 4.5%
# (2.2% is one standard error of a variance from 4000 draws).
MEAN_TOL, VAR_TOL = 0.05, 0.12


def test_fit_then_sample_matches_the_ou_marginals(backend):
    """Fokker-Planck matching on a 2-D OU target, then Euler-Maruyama paths of the fitted SDE
    from p_0 (torchsde / diffrax): their moments at t = 0.5 and 1 against the closed form."""
    if backend.name == "torch":
        pytest.importorskip("torchsde")
    else:
        pytest.importorskip("diffrax")
        pytest.importorskip("optax")
    sde = _sde(backend)
    f, g = _nets(backend, FIT_SPEC)
    fitted = sde.fit(f, g, FIT_TARGET, steps=200, batch=256, lr=1e-2, seed=0)
    assert fitted.losses.shape == (200,)
    assert fitted.losses[-10:].mean() < 1e-2 * fitted.losses[:10].mean()
    x0 = FIT_TARGET.sample(np.zeros(N_PATHS), np.random.default_rng(1))
    paths = sde.sample_sde(
        fitted.drift, fitted.diffusion, backend.asarray(x0), [0.0, 0.5, 1.0], dt=0.02, seed=0
    )
    assert tuple(paths.shape) == (3, N_PATHS, 2)
    for i, t in ((1, 0.5), (2, 1.0)):
        y = _np(backend, paths[i])
        assert np.abs(y.mean(0) - FIT_TARGET.mean(t)).max() < MEAN_TOL, (t, y.mean(0))
        assert np.abs(y.var(0) / FIT_TARGET.variance(t) - 1).max() < VAR_TOL, (t, y.var(0))


# --- bad input -------------------------------------------------------------------------------


def _call(backend, **changes):
    """fp_residual with one argument replaced."""
    f, g = _nets(backend, NETS["masked"])
    t, x = _points(backend, OU)
    args = {"drift": f, "diffusion": g, "target": OU, "t": t, "x": x, "route": "hollow"}
    args.update(changes)
    return _sde(backend).fp_residual(**args)


def _bad_cases(backend):
    xp = _xp(backend)
    ou_drift, ou_diffusion = OU.fields(xp)
    static = backend.build(HollowSpec(dim=3, dtype="float64"))
    wide = backend.build(HollowSpec(dim=4, time_dependent=True, dtype="float64"))
    single = backend.build(HollowSpec(dim=3, time_dependent=True))
    x = np.random.default_rng(0).standard_normal((6, 3))
    nan = x.copy()
    nan[2, 1] = np.nan
    one_order = DimwiseField(ou_diffusion.fn, ou_diffusion.ddim[:1], 3)
    bad_log_prob = UserTarget(3, lambda t, x: x)  # (batch, d), not (batch,)
    return {
        "route": ({"route": "jacobian"}, ValueError, "unknown route"),
        "x shape": ({"x": backend.asarray(x[:, :2])}, ValueError, "shape"),
        "x dtype": ({"x": backend.asarray(x.astype(np.int32))}, TypeError, "float32 or float64"),
        "x nan": ({"x": backend.asarray(nan)}, ValueError, "x contains NaN"),
        "t shape": ({"t": backend.asarray(np.zeros(4))}, ValueError, "t must be a scalar"),
        "t inf": ({"t": math.inf}, ValueError, "t contains NaN or inf"),
        "not time-dependent": ({"drift": static}, ValueError, "time-dependent"),
        "dim": ({"diffusion": wide}, ValueError, "dim 4 but the target has dim 3"),
        "model dtype": ({"drift": single}, TypeError, "float32"),
        "callable on hollow": ({"drift": ou_drift.fn}, ValueError, "route 'hollow' needs"),
        "too few orders": ({"diffusion": one_order}, ValueError, r"D_dim\^1\.\.2"),
        "target": ({"target": "ou"}, TypeError, "target must be"),
        "log_prob shape": ({"target": bad_log_prob}, ValueError, "log_prob must return"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "route", "x shape", "x dtype", "x nan", "t shape", "t inf", "not time-dependent", "dim",
        "model dtype", "callable on hollow", "too few orders", "target", "log_prob shape",
    ],
)  # fmt: skip
def test_bad_input_names_the_problem(backend, case):
    changes, error, words = _bad_cases(backend)[case]
    with pytest.raises(error, match=words):
        _call(backend, **changes)


def test_bad_fit_and_sampling_arguments(backend):
    sde = _sde(backend)
    f, g = _nets(backend, NETS["masked"])
    with pytest.raises(ValueError, match="steps must be a positive int"):
        sde.fit(f, g, OU, steps=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        sde.fit(f, g, OU, lr=-1.0)
    with pytest.raises(ValueError, match="no sampler"):
        sde.fit(f, g, UserTarget(3, lambda t, x: x.sum(-1)), steps=1)
    x0 = backend.asarray(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="strictly increasing"):
        sde.sample_sde(f, g, x0, [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="dt must be in"):
        sde.sample_sde(f, g, x0, [0.0, 1.0], dt=0.0)


@pytest.mark.parametrize(
    "build, error, words",
    [
        (lambda: ou_process(0), ValueError, "dim must be a positive int"),
        (lambda: ou_process(2, theta=0.0), ValueError, "theta must be > 0"),
        (lambda: ou_process(2, sigma=(1.0, -1.0)), ValueError, "sigma must be > 0"),
        (lambda: ou_process(2, mu=math.nan), ValueError, "mu must be finite"),
        (lambda: ou_process(2, t_span=(1.0, 0.0)), ValueError, "t_span"),
        (lambda: ou_mixture(2, weights=(0.5, 0.4)), ValueError, "sum to 1"),
        (lambda: ou_mixture(2, means0=np.zeros((3, 2))), ValueError, "means0 must broadcast"),
        (lambda: DimwiseField(None, (), 2), TypeError, "callable fn"),
        (lambda: UserTarget(2, "log p"), TypeError, "log_prob must be a callable"),
    ],
)
def test_bad_targets_and_fields(build, error, words):
    with pytest.raises(error, match=words):
        build()


# --- the report's table on golden input ------------------------------------------------------

# Median ms per (backend, mode, route, d); a string is the status of a point that did not run.
GOLDEN = {
    ("torch", "eval", "hollow"): {8: 2.0, 32: 2.5},
    ("torch", "eval", "dense"): {8: 10.0, 32: "oom"},
    ("torch", "train", "hollow"): {8: 4.0},
    ("jax", "eval", "hollow"): {8: 0.5},
    ("jax", "eval", "dense"): {8: 1.5},
}


def _golden_json() -> dict:
    benchmarks, not_run = [], []
    for (backend, mode, route), times in GOLDEN.items():
        for d, ms in times.items():
            ran = not isinstance(ms, str)
            name = f"test_sde[{backend}-cpu-{route}-d{d}-b16-{mode}]"
            entry = {
                "group": None,
                "name": name,
                "fullname": f"bench/test_sde.py::{name}",
                "params": {"backend": backend, "route": route, "d": d, "mode": mode},
                "extra_info": {
                    "backend": backend, "device": "cpu", "device_name": "Test CPU",
                    "workload": "sde", "route": route,
                    "method": "hollow" if route == "hollow" else "dense_vectorized",
                    "model": "hollownet", "d": d, "batch": 16, "k": 2, "n_probes": None,
                    "mode": mode, "dtype": "float32", "status": "ok" if ran else ms,
                    "reason": None if ran else "injected",
                },
            }  # fmt: skip
            if ran:
                s = ms / 1e3
                stats = {k: s for k in ("min", "max", "mean", "median", "q1", "q3")}
                entry["stats"] = stats | {"stddev": 0.0, "iqr": 0.0, "rounds": 5, "ops": 1 / s}
                benchmarks.append(entry)
            else:
                not_run.append(entry)
    return {
        "machine_info": {"node": "gold", "hollowbench": {"node": "gold", "gpus": []}},
        "benchmarks": benchmarks,
        "datetime": "2026-01-02T03:04:05+00:00",
        "hollowbench": {"not_run": not_run},
    }


def test_report_table_compares_the_routes_on_golden_input(tmp_path):
    pytest.importorskip("pandas")
    from reports.load import load_results
    from reports.tables import sde_table

    path = tmp_path / "sde.json"
    path.write_text(json.dumps(_golden_json()))
    table = sde_table(load_results([str(path)]))
    assert list(table.columns) == [
        "backend", "device", "mode", "d", "hollow ms", "dense ms", "dense / hollow", "missing",
    ]  # fmt: skip
    rows = {(r.backend, r.mode, r.d): r for r in table.itertuples(index=False)}
    assert set(rows) == {("torch", "eval", 8), ("torch", "eval", 32), ("torch", "train", 8),
                         ("jax", "eval", 8)}  # fmt: skip

    def cells(key):
        row = rows[key]
        return row[4], row[5], row[6], row[7]

    hollow, dense, ratio, missing = cells(("torch", "eval", 8))
    assert (hollow, dense, missing) == (2.0, 10.0, "")
    assert ratio == pytest.approx(10.0 / 2.0)
    assert cells(("torch", "eval", 32)) == (2.5, "oom", "oom", "")  # not run: its status
    hollow, dense, ratio, missing = cells(("torch", "train", 8))
    assert hollow == 4.0 and math.isnan(dense) and math.isnan(ratio)  # missing: NaN, never 0
    assert missing == "no dense point"
    assert cells(("jax", "eval", 8))[2] == pytest.approx(3.0)
