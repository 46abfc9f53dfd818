"""The speed-goal tables (reports/goals.py) on a hand-written input: every expected ratio and
verdict is computed here from the numbers below, not by the code under test."""

from __future__ import annotations

import json

import pytest

from reports.goals import goal_a, goal_b, goal_c, goal_d
from reports.load import load_results
from reports.tables import NoData

GPU = "Test GPU"
# (backend, variant, workload, method, model, mode, k, d): median ms, or a not-run status.
POINTS = {
    ("torch", "eager", "divergence", "hollow", "hollownet", "train", 1, 8): 4.0,
    ("torch", "eager", "divergence", "hollow", "hollownet", "train", 1, 128): 4.0,
    ("torch", "cudagraph", "divergence", "hollow", "hollownet", "train", 1, 8): 0.3,
    ("torch", "cudagraph", "divergence", "hollow", "hollownet", "train", 1, 128): 1.2,
    ("torch", "eager", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 3.0,
    ("torch", "eager", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 128): 3.0,
    ("torch", "cudagraph", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 0.4,
    ("torch", "cudagraph", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 128): 0.8,
    ("jax", "jit", "divergence", "hollow", "hollownet", "train", 1, 8): 0.25,
    ("jax", "jit", "divergence", "hollow", "hollownet", "train", 1, 128): 0.6,
    ("jax", "jit", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 0.3,
    ("jax", "jit", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 128): "oom",
    ("torch", "eager", "divergence", "hollow", "hollownet", "eval", 1, 128): 1.0,
    ("torch", "eager", "divergence", "hollow", "hollownet", "eval", 1, 512): 2.0,
    ("torch", "eager", "divergence", "dense_loop", "hollownet", "eval", 1, 128): 50.0,
    ("torch", "eager", "divergence", "dense_vectorized", "hollownet", "eval", 1, 128): 40.0,
    ("torch", "eager", "divergence", "dense_loop", "hollownet", "eval", 1, 512): 200.0,
    ("torch", "eager", "divergence", "dense_vectorized", "hollownet", "eval", 1, 512): "oom",
    ("torch", "eager", "ddim", "hollow", "hollownet", "eval", 1, 8): 1.0,
    ("torch", "eager", "ddim", "hollow", "hollownet", "eval", 4, 8): 4.5,
    ("torch", "eager", "ddim", "hollow", "hollownet", "eval", 1, 128): 1.0,
    ("torch", "eager", "ddim", "hollow", "hollownet", "eval", 4, 128): 6.0,
}


def entry(key: tuple, ms) -> dict:
    backend, variant, workload, method, model, mode, k, d = key
    ran = not isinstance(ms, str)
    name = f"test_{workload}[{backend}-{method}+{variant}-{model}-d{d}-k{k}-{mode}]"
    info = {
        "backend": backend,
        "device": "cuda:0",
        "device_name": GPU,
        "workload": workload,
        "method": method,
        "variant": variant,
        "model": model,
        "d": d,
        "batch": 512,
        "k": k,
        "n_probes": 1 if method == "hutchinson" else None,
        "mode": mode,
        "matmul_precision": "high" if backend == "torch" else "tensorfloat32",
        "status": "ok" if ran else ms,
    }
    out = {"name": name, "fullname": f"bench/x.py::{name}", "params": {}, "extra_info": info}
    if ran:
        out["stats"] = {"median": ms / 1e3, "min": ms / 1e3, "max": ms / 1e3}
    return out


def load(folder, points: dict):
    entries = [entry(key, ms) for key, ms in points.items()]
    doc = {
        "machine_info": {"node": "gpu-box"},
        "benchmarks": [e for e in entries if "stats" in e],
        "hollowbench": {"not_run": [e for e in entries if "stats" not in e]},
        "datetime": "2026-11-27T00:00:00+00:00",
    }
    path = folder / "results.json"
    path.write_text(json.dumps(doc))
    return load_results([str(path)])


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return load(tmp_path_factory.mktemp("goals"), POINTS)


def one(table, **where):
    rows = table
    for column, value in where.items():
        rows = rows[rows[column].eq(value)]
    assert len(rows) == 1, where
    return rows.iloc[0]


def test_goal_a_compares_hollow_with_hutchinson_one_within_each_variant(frame):
    table = goal_a(frame)
    eager = one(table, backend="torch", variant="eager")
    assert eager["d=8"] == pytest.approx(4.0 / 3.0) and eager["d=128"] == pytest.approx(4 / 3)
    assert eager["verdict"].startswith("missed at d=8 (1.33 vs 1), d=128")
    graph = one(table, backend="torch", variant="cudagraph")
    assert graph["d=8"] == pytest.approx(0.75) and graph["d=128"] == pytest.approx(1.5)
    assert graph["verdict"] == "missed at d=128 (1.5 vs 1)"
    jax = one(table, backend="jax")
    assert jax["d=8"] == pytest.approx(0.25 / 0.3) and jax["d=128"] == "oom"
    assert jax["verdict"] == "met at every measured d; did not run at d=128 (oom)"


def test_goal_a_pairs_eval_points_where_the_mlp_ran_no_train_step(tmp_path):
    # The MLP side's 'step' key is empty throughout, the hollow side's is text (its train
    # step): the merge once failed on the mixed dtypes and the report lost goal (a).
    points = {
        ("torch", "eager", "divergence", "hollow", "hollownet", "train", 1, 8): 4.0,
        ("torch", "eager", "divergence", "hollow", "hollownet", "eval", 1, 8): 1.0,
        ("torch", "eager", "divergence", "hutchinson", "mlp_flop_matched", "eval", 1, 8): 2.0,
    }
    table = goal_a(load(tmp_path, points))
    assert len(table) == 1
    assert table["d=8"].iloc[0] == pytest.approx(0.5)
    assert table["verdict"].iloc[0] == "met at every measured d"


def test_goal_a_pairs_a_fused_variant_with_its_base_variants_hutchinson(tmp_path):
    # No Hutchinson step runs a fused tau: triton's twin is eager's, pallas's is jit's.
    points = {
        ("torch", "triton", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 1.5,
        ("torch", "eager", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 6.0,
        ("torch", "eager", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 3.0,
        ("torch", "cudagraph", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 1.0,
        ("jax", "pallas", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 0.9,
        ("jax", "jit", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 0.6,
    }
    table = goal_a(load(tmp_path, points))
    triton = one(table, method="hollow_forward+triton")
    assert triton["variant"] == "eager" and triton["d=8"] == pytest.approx(0.5)
    assert one(table, method="hollow_forward", variant="eager")["d=8"] == pytest.approx(2.0)
    pallas = one(table, method="hollow_forward+pallas")
    assert pallas["variant"] == "jit" and pallas["d=8"] == pytest.approx(1.5)
    assert pallas["verdict"] == "missed at d=8 (1.5 vs 1)"
    assert len(table) == 3  # cudagraph's Hutchinson has no hollow partner


def test_goal_a_pairs_a_compiled_train_step_with_the_eager_hutchinson(tmp_path):
    # torch.compile cannot build Hutchinson's train step (double backward): a compiled hollow
    # train step's twin is eager's, named apart; in eval, compile pairs with compile.
    points = {
        ("torch", "compile", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 2.4,
        ("torch", "eager", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 3.0,
        ("torch", "eager", "divergence", "hutchinson", "mlp_flop_matched", "train", 1, 8): 2.0,
        ("torch", "compile", "divergence", "hollow_forward", "hollownet", "eval", 1, 8): 0.5,
        ("torch", "compile", "divergence", "hutchinson", "mlp_flop_matched", "eval", 1, 8): 1.0,
    }
    table = goal_a(load(tmp_path, points))
    compiled = one(table, method="hollow_forward+compile")
    assert compiled["variant"] == "eager" and compiled["mode"] == "train"
    assert compiled["d=8"] == pytest.approx(1.2)
    assert one(table, method="hollow_forward", variant="eager")["d=8"] == pytest.approx(1.5)
    assert one(table, method="hollow_forward", mode="eval")["d=8"] == pytest.approx(0.5)
    assert len(table) == 3


def test_goal_b_takes_the_faster_dense_method_against_d_over_4(frame):
    table = goal_b(frame)
    r = one(table, backend="torch", mode="eval")
    assert r["d=128"] == pytest.approx(40.0) and r["d=512"] == pytest.approx(100.0)
    assert r["verdict"] == "missed at d=512 (100 vs 128)"
    assert "d=8" not in table  # the goal starts at d = 128


def test_goal_c_is_k4_over_k1(frame):
    r = one(goal_c(frame), method="hollow")
    assert r["d=8"] == pytest.approx(4.5) and r["d=128"] == pytest.approx(6.0)
    assert r["verdict"] == "missed at d=128 (6 vs 5)"


def test_goal_d_takes_the_fastest_torch_variant_against_jax(frame):
    r = one(goal_d(frame), mode="train", method="hollow")
    assert r["d=8"] == pytest.approx(0.3 / 0.25) and r["d=128"] == pytest.approx(1.2 / 0.6)
    assert r["verdict"] == "missed at d=128 (2 vs 1.5)"
    assert r["fastest torch variant"] == "cudagraph"


def test_goal_d_takes_the_fastest_jax_variant_too(tmp_path):
    points = {
        ("torch", "eager", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 2.0,
        ("torch", "triton", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 1.0,
        ("jax", "jit", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 4.0,
        ("jax", "pallas", "divergence", "hollow_forward", "hollownet", "train", 1, 8): 0.5,
    }
    r = one(goal_d(load(tmp_path, points)), method="hollow_forward")
    assert r["d=8"] == pytest.approx(1.0 / 0.5)  # not the median of jit and pallas
    assert r["fastest torch variant"] == "triton"


def test_goals_without_their_points_say_so(frame):
    jax_only = frame[frame["backend"].eq("jax")]
    with pytest.raises(NoData, match="both backends"):
        goal_d(jax_only)
    with pytest.raises(NoData, match="k = 1 and k = 4"):
        goal_c(jax_only)
