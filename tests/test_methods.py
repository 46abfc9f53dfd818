"""The method registry (impls/methods.py): its views are the tuples the rest of hollowbench
reads, each backend dispatches through it, and a method registered there (with an operator per
backend and nothing else) runs in the sweep and shows in the report."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import impls
from impls import methods
from reports.load import load_results
from results_format.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]


def test_the_views_are_the_registry_s():
    assert impls.METHODS == (
        "hollow", "hollow_forward", "dense_loop", "dense_vectorized",
        "hutchinson", "hutchpp", "xtrace", "xdiag",
    )  # fmt: skip
    assert impls.HOLLOW_METHODS == ("hollow", "hollow_forward")
    assert impls.DENSE_METHODS == ("dense_loop", "dense_vectorized")
    assert (*impls.HOLLOW_METHODS, *impls.DENSE_METHODS) == impls.EXACT_METHODS
    assert impls.ESTIMATORS == ("hutchpp", "xtrace", "xdiag")
    assert ("hutchinson", *impls.ESTIMATORS) == impls.STOCHASTIC_METHODS
    assert methods.TRACE_ESTIMATORS == ("hutchpp", "xtrace")
    assert methods.MIN_MATVECS == {"hutchpp": 3, "xtrace": 2, "xdiag": 2}
    assert methods.METHOD_OPTS["hutchinson"] == ("n_probes", "noise", "seed")
    assert methods.DEFAULT_NOISE["hutchinson"] == "rademacher"


def test_a_method_is_registered_once_and_only_with_known_fields():
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.REGISTRY["hollow"])
    with pytest.raises(ValueError, match="kind must be"):
        methods.Method("odd", kind="approximate", family="odd")
    with pytest.raises(ValueError, match="budget 'n_probes' is not an option"):
        methods.Method("odd", kind="stochastic", family="odd", budget="n_probes")
    with pytest.raises(ValueError, match="no such method"):
        methods.implement("torch", {"odd": lambda call: None})


@pytest.fixture
def toy():
    """The toy method registered in this process, and gone again after the test."""
    import toy_method  # tests/ is on sys.path under pytest

    toy_method.register()
    yield toy_method
    methods.unregister(toy_method.NAME)


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_each_backend_dispatches_a_registered_method(toy, name):
    B = impls.load_backend(name, "cpu")
    net = B.build(impls.HollowSpec(dim=6), seed=0)
    x = B.asarray(np.random.default_rng(0).standard_normal((5, 6)).astype("float32"))
    assert toy.NAME in impls.METHODS and toy.NAME in impls.STOCHASTIC_METHODS
    for op in (B.divergence, B.ddim):
        got = op(net, x, method=toy.NAME, n_probes=3, **B.random_opts(7))
        want = op(net, x, method="hutchinson", n_probes=3, **B.random_opts(7))
        np.testing.assert_allclose(B.to_numpy(got), B.to_numpy(want), rtol=1e-6)
    with pytest.raises(ValueError, match="estimates k=1 only"):
        B.ddim(net, x, k=2, method=toy.NAME, **B.random_opts(7))
    assert methods.label(toy.NAME) == toy.LABEL


def test_a_method_without_an_operator_for_a_backend_says_so(toy):
    methods._OPERATORS["jax"].pop(toy.NAME)
    B = impls.load_backend("jax", "cpu")
    net = B.build(impls.HollowSpec(dim=4), seed=0)
    x = B.asarray(np.ones((2, 4), dtype="float32"))
    with pytest.raises(ValueError, match="'hutchinson2' has no jax operator"):
        B.divergence(net, x, method=toy.NAME, seed=0)


@pytest.mark.slow
def test_a_registered_method_runs_in_the_sweep_and_shows_in_the_report(tmp_path):
    """The sweep's grid takes the toy method from the registry (no preset, grid or workload
    names it), and the report labels it as its record says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLLOWBENCH_")}
    env |= {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "toy.json"
    sweep = [
        sys.executable, "-m", "pytest", "-p", "tests.toy_method", "bench/test_divergence.py",
        "-p", "no:cacheprovider", "-q", f"--benchmark-json={out}", "--bench-backends=torch",
        "--bench-devices=cpu", f"--bench-methods={'hutchinson2'}", "--bench-models=hollownet",
        "--bench-modes=eval", "--bench-dims=8", "--bench-n-probes=1,2", "--bench-variants=eager",
        "--bench-compile-workers=0", "--bench-jax-cache=off", "--benchmark-max-time=0.01",
    ]  # fmt: skip
    run = subprocess.run(sweep, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    infos = [b["extra_info"] for b in doc["benchmarks"]]
    assert sorted((i["method"], i["n_probes"], i["status"]) for i in infos) == [
        ("hutchinson2", 1, "ok"),
        ("hutchinson2", 2, "ok"),
    ]
    assert all(i["error_kind"] == "rel_std" and i["error"] > 0 for i in infos)
    # The results contract: the version everywhere, and each point read once from the pair.
    assert doc["hollowbench"]["schema_version"] == SCHEMA_VERSION
    lines = [
        json.loads(line)
        for line in out.with_suffix(".journal.jsonl").read_text().split("\n")
        if line
    ]
    assert [line["kind"] for line in lines] == ["session", "point", "point"]
    assert all(line["schema_version"] == SCHEMA_VERSION for line in lines)
    assert lines[0]["session"] == doc["hollowbench"]["session"]
    both = load_results([str(out), str(out.with_suffix(".journal.jsonl"))])
    assert len(both) == 2 and set(both["source_kind"]) == {"json"}
    build = (
        "import sys, tests.toy_method; from reports.__main__ import main; "
        f"sys.exit(main(['build', {str(out)!r}, '--out', {str(tmp_path / 'report')!r}]))"
    )
    run = subprocess.run([sys.executable, "-c", build], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "report" / "tables" / "points.csv", newline="") as f:
        series = sorted(row["series"] for row in csv.DictReader(f))
    assert series == ["Hutchinson, the toy copy-1", "Hutchinson, the toy copy-2"]
