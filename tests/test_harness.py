"""The benchmark harness itself (bench/harness): options, sharding, journal, failure handling.

The sweep tests run ``python -m pytest bench/...`` in a subprocess on a tiny grid, as a user
would, and read back what it wrote; they never look at timings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.harness import journal, options, presets
from bench.harness.progress import Progress
from bench.harness.sweep import Case, PointTimeout, Sweep, Task, classify, time_limit
from bench.harness.telemetry import machine_info
from bench.schema import SPEC_KEYS
from bench.workloads import operators
from bench.workloads.operators import Point, predict_bytes
from impls import (
    DENSE_METHODS,
    ESTIMATORS,
    EXACT_METHODS,
    FUSED_VARIANTS,
    HOLLOW_METHODS,
    METHODS,
    STOCHASTIC_METHODS,
    HollowSpec,
    flop_matched_mlp,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_KEYS = {
    "backend", "device", "device_name", "workload", "method", "model", "d", "batch", "k",
    "n_probes", "mode", "step", "dtype", "matmul_precision", "n_params", "flops", "compile_s",
    "peak_mem_bytes", "error", "error_kind", "energy_j", "status", "reason",
}  # fmt: skip


# --- options ------------------------------------------------------------------------------


def test_defaults_are_the_quick_preset():
    s = options.resolve({})
    quick = presets.PRESETS["quick"]
    assert s.preset is quick and s.dims == quick.dims and s.ks == quick.ks
    assert s.backends == ("torch", "jax") and set(s.methods) == set(METHODS)
    assert s.shard == (1, 1) and s.devices is None and s.timeout_s == quick.timeout_s


def test_values_parse_with_ranges_and_aliases():
    s = options.resolve(
        {"dims": "8, 32,8", "k": "1-3", "devices": "gpu,cpu", "shard": "2/4", "methods": "all"}
    )
    assert s.dims == (8, 32) and s.ks == (1, 2, 3)
    assert s.devices == ("cuda:0", "cpu") and s.shard == (2, 4)
    assert s.methods == METHODS


@pytest.mark.parametrize(
    ("dest", "value", "words"),
    [
        ("preset", "huge", "choose from quick, paper, full"),
        ("dims", "8,abc", "'abc' is not an integer"),
        ("dims", "0", "out of range"),
        ("k", "5", "between 1 and 4"),
        ("backends", "tensorflow", "choose from torch, jax"),
        ("methods", "hollow,exact", "'exact'"),
        ("devices", "tpu", "use cpu, cuda, cuda:N or all"),
        ("shard", "0/2", "1 <= I <= N"),
        ("shard", "3/2", "1 <= I <= N"),
        ("timeout", "-1", ">= 0"),
        ("variants", "graph", "choose from eager, cudagraph, compile, triton, jit"),
        ("matmul_precision", "tf16", "choose from default, tf32, highest"),
    ],
)
def test_bad_values_name_the_option(dest, value, words):
    opt = next(o for o in options.OPTIONS if o.dest == dest)
    with pytest.raises(options.OptionError) as err:
        options.resolve({dest: value})
    assert opt.flag in str(err.value) and opt.env in str(err.value)
    assert words in str(err.value)


class _Config:
    """What options.from_config uses of a pytest.Config: options with pytest-benchmark's
    defaults where not given, the ini's addopts and the command line's words."""

    def __init__(self, args=(), addopts=(), **cli):
        self.cli = {"benchmark_max_time": 1.0, "benchmark_min_rounds": 5} | cli
        self.addopts = list(addopts)
        self.rootpath = ROOT
        self.invocation_params = pytest.Config.InvocationParams(
            args=tuple(args), plugins=None, dir=ROOT
        )

    def getoption(self, name, default=None):
        return self.cli.get(name, default)

    def getini(self, name):
        assert name == "addopts"
        return self.addopts


def test_the_jax_cache_sits_under_the_rootdir_unless_named_or_off(monkeypatch, tmp_path):
    for name in ("HOLLOWBENCH_JAX_CACHE", "HOLLOWBENCH_SHARD", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    default = options.from_config(_Config()).jax_cache
    assert default == str(ROOT / ".benchmarks" / "jax-cache")
    assert options.from_config(_Config(bench_jax_cache=str(tmp_path))).jax_cache == str(tmp_path)
    assert options.from_config(_Config(bench_jax_cache="off")).jax_cache is None


def test_command_line_beats_environment_beats_preset(monkeypatch):
    monkeypatch.setenv("HOLLOWBENCH_PRESET", "paper")
    monkeypatch.setenv("HOLLOWBENCH_DIMS", "16")
    s = options.from_config(_Config(bench_dims="64"))
    assert s.preset.name == "paper" and s.dims == (64,)
    assert s.batches == presets.PRESETS["paper"].batches


def test_pytest_benchmark_timing_options_replace_the_budget(monkeypatch):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    given = ["--benchmark-max-time", "0.05", "--benchmark-min-rounds=2"]
    s = options.from_config(_Config(given, benchmark_max_time=0.05, benchmark_min_rounds=2))
    assert (s.timing.budget_s, s.timing.min_rounds) == (0.05, 2)
    assert options.from_config(_Config()).timing == presets.PRESETS["quick"].timing


def test_pytest_benchmark_defaults_given_explicitly_still_count(monkeypatch):
    """``--benchmark-max-time 1.0 --benchmark-min-rounds 5`` equal pytest-benchmark's own
    defaults, yet were asked for: they replace the preset's budget (0.2 s, 3 rounds)."""
    quick = presets.PRESETS["quick"].timing
    assert (quick.budget_s, quick.min_rounds) != (1.0, 5)
    monkeypatch.setenv("PYTEST_ADDOPTS", "--benchmark-min-rounds 5")
    s = options.from_config(_Config(addopts=["--benchmark-max-time=1.0"]))
    assert (s.timing.budget_s, s.timing.min_rounds) == (1.0, 5)
    monkeypatch.delenv("PYTEST_ADDOPTS")
    s = options.from_config(_Config(["bench", "--benchmark-max-time", "1.0"]))
    assert (s.timing.budget_s, s.timing.min_rounds) == (1.0, quick.min_rounds)


def test_faults_need_a_time_limit():
    assert options.resolve({"inject": "oom=*d8*,delay=0.5"}).faults.oom == "*d8*"
    with pytest.raises(options.OptionError, match="--bench-timeout"):
        options.resolve({"inject": "timeout=*", "timeout": "0"})
    with pytest.raises(options.OptionError, match="HOLLOWBENCH_INJECT"):
        options.resolve({"inject": "explode=*"})


# --- grid and shards ----------------------------------------------------------------------

DEVICES = {"torch": ("cpu", "cuda:0"), "jax": ("cpu",)}


DIVERGENCE = operators.Grid("divergence", METHODS, (1,))


def _points(
    settings: options.Settings, workload: operators.Grid = DIVERGENCE
) -> list[operators.Point]:
    return operators.expand(workload, settings, DEVICES)


def test_variants_run_only_where_they_can():
    points = _points(options.resolve({"preset": "paper"}))
    by_variant = {v: [p for p in points if p.variant == v] for v in presets.ALL_VARIANTS}
    assert {p.backend for p in by_variant["jit"]} == {"jax"}
    assert all(p.device.startswith("cuda") for p in by_variant["cudagraph"])
    # compile trains only where the train step differentiates once
    compiled_train = {p.method for p in by_variant["compile"] if p.mode == "train"}
    assert compiled_train == set(operators.COMPILE_TRAIN_METHODS) == {"hollow_forward"}
    others = by_variant["cudagraph"] + by_variant["compile"]
    assert {p.method for p in others} == set(operators.VARIANT_METHODS)
    # Every variant point has its eager twin, named apart so the eager figure stays.
    eager = {p.id for p in by_variant["eager"]}
    for p in others:
        twin = operators.Point(**{**p.__dict__, "variant": "eager"})
        assert (
            twin.id in eager and p.id == twin.id.replace(f"-{p.method}-", f"-{p.label}-") != twin.id
        )
        assert p.label == f"{p.method}+{p.variant}"


def test_fused_variants_run_hollow_forward_at_k1_and_skip_off_a_gpu(monkeypatch):
    """The triton variant changes tau's k = 1 value and tangent only: its points are
    hollow_forward at k = 1, in both modes, beside their eager twins. Off a GPU, or without
    the triton package, they are skipped with the reason rather than run."""
    settings = options.resolve({"preset": "paper"})
    points = _points(settings) + _points(settings, operators.Grid("ddim", METHODS))
    fused = [p for p in points if p.variant == "triton"]
    assert {(p.method, p.k) for p in fused} == {("hollow_forward", 1)}
    assert {p.mode for p in fused} == {"eval", "train"}
    assert {p.device for p in fused} == {"cpu", "cuda:0"}
    eager = {p.id for p in points if p.variant == "eager"}
    assert all(operators.Point(**{**p.__dict__, "variant": "eager"}).id in eager for p in fused)
    on_gpu = next(p for p in fused if p.device == "cuda:0")
    on_cpu = next(p for p in fused if p.device == "cpu")
    assert "needs a GPU" in operators.variant_unavailable(on_cpu)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "triton" else real(name)
    )
    assert "triton package" in operators.variant_unavailable(on_gpu)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert operators.variant_unavailable(on_gpu) is None
    assert all(
        operators.variant_unavailable(p) is None for p in points if p.variant not in FUSED_VARIANTS
    )


def test_quick_preset_compiles_a_few_points_and_variants_can_be_chosen():
    quick = _points(options.resolve({}))
    assert {p.variant for p in quick} == {"eager", "cudagraph", "compile", "jit"}
    compiled = [p for p in quick if p.variant == "compile" and p.device == "cpu"]
    assert {p.d for p in compiled} == {128, 512}
    assert {p.method for p in compiled} == set(operators.VARIANT_METHODS)
    assert {p.mode for p in compiled} == {"eval", "train"}
    assert len(compiled) <= 10  # 15-60 s of compilation each on a 2-core CPU
    only = _points(options.resolve({"variants": "cudagraph"}))
    assert only and {(p.backend, p.variant) for p in only} == {("torch", "cudagraph")}


def test_grid_follows_the_rules():
    points = _points(options.resolve({"preset": "full"}))
    assert len({p.id for p in points}) == len(points)
    assert all(p.model == "hollownet" for p in points if p.method in HOLLOW_METHODS)
    assert all((p.n_probes is None) == (p.method != "hutchinson") for p in points)
    assert all((p.n_matvecs is None) == (p.method not in ESTIMATORS) for p in points)
    assert all(p.k == 1 for p in points if p.method in STOCHASTIC_METHODS)
    models = {(p.model, p.method) for p in points}
    assert {m for m, _ in models} == set(presets.MODELS)  # dense and hutchinson on every model


def test_estimators_sweep_their_budget_and_quick_runs_a_handful():
    """--bench-n-matvecs is the estimators' axis; quick keeps one budget each, HollowNet
    training steps at d = 32, and the ids of every other point."""
    points = _points(options.resolve({"preset": "full", "n_matvecs": "3,12,48"}))
    budgets = {(p.method, p.n_matvecs) for p in points if p.method in ESTIMATORS}
    assert budgets == {(m, n) for m in ESTIMATORS for n in (3, 12, 48)}
    assert {p.model for p in points if p.method in ESTIMATORS} == set(presets.MODELS)
    quick = [p for p in _points(options.resolve({})) if p.method in ESTIMATORS]
    assert {(p.method, p.n_matvecs) for p in quick} == {(m, 12) for m in ESTIMATORS}
    assert len(quick) == len(ESTIMATORS) * len({(p.backend, p.device) for p in quick})
    assert {(p.model, p.mode, p.d) for p in quick} == {("hollownet", "train", 32)}
    assert quick[0].id.endswith(f"-{quick[0].method}-mv12-d32-b32-k1-train")


def test_quick_covers_the_acceptance_grid():
    s = options.resolve({})
    div, dd = _points(s), _points(s, operators.Grid("ddim", EXACT_METHODS))
    points = div + dd
    assert {p.method for p in points} == set(METHODS)
    assert {p.mode for p in points} == {"eval", "train"}
    assert {p.k for p in dd} == {1, 2, 3} and len({p.d for p in points}) >= 4
    assert len({p.n_probes for p in div if p.method == "hutchinson"}) > 1
    ratio_pair = {
        (p.method, p.backend) for p in div if (p.d, p.mode, p.model) == (128, "eval", "hollownet")
    }
    assert {
        ("dense_loop", "torch"),
        ("hollow", "torch"),
        ("dense_loop", "jax"),
        ("hollow", "jax"),
    } <= ratio_pair


@pytest.mark.parametrize("name", ["cnf", "ode", "sde"])
def test_workload_presets_cover_the_harness_presets(name):
    """A workload that declares its own presets has one under every --bench-preset name."""
    from bench.workloads import workload

    assert set(workload(name).presets) == set(presets.PRESETS)


def test_settings_record_the_options_given_and_sde_follows_them():
    """--bench-dims given with the harness preset's own values still replaces the SDE
    workload's dimensions: Settings.given says it was given, whatever its value."""
    from bench.workloads import sde

    quick = presets.PRESETS["quick"]
    same = ",".join(map(str, quick.dims))
    assert options.resolve({}).given == frozenset()
    given = options.resolve({"dims": same, "inject": "delay=0"})
    assert given.given == {"dims", "inject"} and given.dims == quick.dims
    devices = {"torch": ("cpu",)}
    own = {p.d for p in sde.WORKLOAD.points(options.resolve({}), devices)}
    asked = {p.d for p in sde.WORKLOAD.points(given, devices)}
    assert own == set(sde.PRESETS["quick"].dims) and asked == set(quick.dims)


def test_every_cnf_point_has_a_memory_estimate():
    """The CNF guard prices every point of the full grid, Hutch++ at its budget included."""
    from bench.workloads import cnf

    settings = options.resolve({"preset": "full"})
    points = cnf.WORKLOAD.points(settings, {"torch": ("cpu",), "jax": ("cpu",)})
    assert {p.method for p in points} >= {"hollow", "hutchinson", "hutchpp"}
    assert all(cnf.need_bytes(p) > 0 for p in points)


def test_limits_bound_d():
    lim = presets.Limit("dense", lambda p: p.method in DENSE_METHODS, max_d=32)
    point = operators.Point(
        "divergence", "torch", "cpu", "dense_loop", "hollownet", 64, 8, 1, "eval"
    )
    assert lim.excludes(point) and not lim.excludes(operators.Point(**{**point.__dict__, "d": 32}))
    assert presets.Limit("x", lambda p: True, max_d=0).describe() == "x: never"


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_and_cover_the_grid(count):
    points = _points(options.resolve({"preset": "paper"}))
    shards = [presets.shard(points, i, count) for i in range(1, count + 1)]
    ids = [p.id for s in shards for p in s]
    assert len(ids) == len(set(ids)) == len(points)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert presets.shard(points, 1, count) == shards[0]  # deterministic
    order = {p.id: i for i, p in enumerate(points)}
    assert all([order[p.id] for p in s] == sorted(order[p.id] for p in s) for s in shards)


# --- small parts --------------------------------------------------------------------------


def test_failures_are_classified():
    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name
        pass

    assert classify(PointTimeout("late")) == "timeout"
    assert classify(MemoryError()) == "oom"
    assert classify(OutOfMemoryError("CUDA out of memory")) == "oom"
    assert classify(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes")) == "oom"
    assert classify(ValueError("shape mismatch")) == "error"


def test_time_limit_interrupts_python_code():
    start = time.perf_counter()
    with pytest.raises(PointTimeout), time_limit(0.2):
        time.sleep(5)
    assert time.perf_counter() - start < 2
    with time_limit(0):  # 0 = no limit
        time.sleep(0.01)


def test_time_limit_lets_an_import_finish(tmp_path, monkeypatch):
    (tmp_path / "hb_slow_module.py").write_text("import time\ntime.sleep(0.4)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PointTimeout), time_limit(0.1):
        import hb_slow_module  # noqa: F401

        time.sleep(5)
    assert sys.modules.pop("hb_slow_module").DONE  # imported whole, then timed out


def test_progress_reports_done_total_and_eta():
    now = [0.0]
    lines = []
    progress = Progress(4, lines.append, every_s=10, clock=lambda: now[0])
    now[0] = 5
    progress.tick()  # too soon after the start for a line
    now[0] = 20
    progress.tick()
    assert lines == ["[hollowbench] 2/4 points (50%), 0:20 elapsed, ETA 0:20"]
    progress.tick()
    progress.tick()  # the last point always reports
    assert lines[-1].startswith("[hollowbench] 4/4 points (100%)")


def test_journal_survives_a_torn_line(tmp_path):
    path = tmp_path / "out.journal.jsonl"
    j = journal.Journal(path, lambda: {"node": "here"})
    j.append({"kind": "point", "name": "a"})
    with open(path, "a") as fh:
        fh.write('{"kind": "point", "na')  # a crash in mid-write
    records = journal.read(path)
    assert [r["kind"] for r in records] == ["session", "point"]
    assert records[0]["machine_info"] == {"node": "here"}


def test_journal_lives_beside_the_json(tmp_path):
    """--benchmark-json arrives as an open file (pytest-benchmark <= 5.2), a Path (5.3 on) or
    a str; relative paths are taken from the invocation directory, and the result is absolute."""
    here = tmp_path / "cwd"
    beside = Path("/x/out.journal.jsonl")
    with open(tmp_path / "out.json", "wb") as opened:
        for given in ("/x/out.json", Path("/x/out.json"), opened):
            want = beside if given != opened else tmp_path / "out.journal.jsonl"
            assert journal.journal_path(None, given, tmp_path, here) == want
    for given in ("sub/out.json", Path("sub/out.json")):
        assert journal.journal_path(None, given, tmp_path, here) == here / "sub/out.journal.jsonl"
    assert journal.journal_path("j.jsonl", "/x/out.json", tmp_path, here) == here / "j.jsonl"
    default = journal.journal_path(None, None, tmp_path, here)
    assert default.parent == tmp_path / ".benchmarks" and default.name.endswith(".journal.jsonl")


def test_memory_prediction_orders_the_methods():
    spec = HollowSpec(dim=128)

    def need(method, mode="eval", k=1):
        return predict_bytes(
            spec, Point("ddim", "torch", "cpu", method, "hollownet", 128, 64, k, mode)
        )

    assert need("dense_vectorized") > need("dense_loop") >= need("hollow") > 0
    assert need("dense_loop", "train") > 50 * need("dense_loop")  # d graphs kept for backward
    assert need("dense_vectorized", k=2) == pytest.approx(2 * need("dense_vectorized"), rel=0.01)


class _FakeBenchmark:
    """pytest-benchmark's fixture as --benchmark-disable leaves it: pedantic runs once."""

    name = fullname = "test_x[fake]"
    enabled = False

    def __init__(self):
        self.extra_info, self.group, self.pedantic_calls = {}, None, 0

    def pedantic(self, target):
        self.pedantic_calls += 1
        return target()


class _FakeBackend:
    name, device, default_variant, pure_steps = "torch", "cpu", "eager", False

    def matmul_precision(self) -> str:
        return "highest"

    def compile_step(self, fn, args, variant):
        return fn, None, None

    def memory_available(self):
        return None

    def reset_peak_memory(self) -> bool:
        return False

    def device_name(self):
        return None

    def sync(self, *arrays) -> None:
        pass

    def warm_up(self) -> None:
        pass

    release_memory = warm_up


def _sweep(tmp_path, **raw) -> Sweep:
    return Sweep(options.resolve(raw), journal.Journal(tmp_path / "j.jsonl", dict))


def test_a_point_records_its_check_and_task_info(tmp_path):
    sweep, bench = _sweep(tmp_path), _FakeBenchmark()
    task = Task(lambda a: a + 1, (1,), check=lambda out, step: (out - step(0), "max_abs"))
    task.info["nfe"] = 7
    sweep.run(bench, Case(_FakeBackend(), lambda: task, {"workload": "fake"}, group="g"))
    info = bench.extra_info
    assert bench.group == "g"
    assert (info["error"], info["error_kind"], info["nfe"], info["status"]) == (
        1,
        "max_abs",
        7,
        "ok",
    )
    assert (info["workload"], info["backend"], info["compile_s"]) == ("fake", "torch", None)
    assert journal.read(tmp_path / "j.jsonl")[-1]["extra_info"]["nfe"] == 7


def test_what_a_task_measures_is_kept_when_its_check_fails(tmp_path):
    sweep, bench = _sweep(tmp_path), _FakeBenchmark()

    def check(out, step):
        raise RuntimeError("stopped early")

    task = Task(lambda a: a + 1, (1,), check=check, measure=lambda out, step: {"nfe": 3 * out})
    sweep.run(bench, Case(_FakeBackend(), lambda: task, {"workload": "fake"}))
    info = bench.extra_info
    assert (info["nfe"], info["error"], info["status"]) == (6, None, "ok")
    assert "error check failed" in info["reason"] and "stopped early" in info["reason"]


def test_a_point_past_its_limit_is_recorded_as_a_timeout(tmp_path):
    sweep, bench = _sweep(tmp_path, timeout="0.2"), _FakeBenchmark()
    with pytest.raises(pytest.skip.Exception, match="timeout: PointTimeout"):
        sweep.run(bench, Case(_FakeBackend(), lambda: time.sleep(5), {}, params={"d": 1}))
    record = sweep.not_run[0]
    assert record["extra_info"]["status"] == "timeout" and record["params"] == {"d": 1}
    assert bench.pedantic_calls == 0  # nothing handed to pytest-benchmark: not in its JSON


def test_points_predicted_not_to_fit_are_skipped_and_journaled(tmp_path):
    sweep, bench = _sweep(tmp_path), _FakeBenchmark()
    with pytest.raises(pytest.skip.Exception, match="skipped: predicted"):
        sweep.run(bench, Case(_FakeBackend(), lambda: pytest.fail("built"), {}, need_bytes=2**60))
    assert bench.extra_info["status"] == "skipped" and bench.pedantic_calls == 0
    assert sweep.not_run[0]["extra_info"]["reason"].startswith("predicted 1073741824.00 GiB > 80%")
    record = journal.read(tmp_path / "j.jsonl")[-1]
    assert record["stats"] is None and record["extra_info"]["predicted_bytes"] == 2**60


def test_machine_info_has_the_schema_keys():
    info = machine_info()
    assert {"node", "cpu", "python", "torch", "jax", "jaxlib", "cuda", "numpy", "gpus"} <= set(info)
    assert isinstance(info["gpus"], list)
    if info["torch"] is not None:  # where torch's "eager" hollow_forward compiles its k = 1 node
        from impls.torch_backend import taylor

        assert info["torch_compile_min_rows"] == taylor.COMPILE_MIN_ROWS


# --- whole sweeps in a subprocess ---------------------------------------------------------


def _backend() -> str:
    """An installed backend for the subprocess sweeps (torch imports faster)."""
    for name in ("torch", "jax"):
        try:
            __import__(name)
            return name
        except ImportError:
            continue
    pytest.skip("neither torch nor jax is installed")


def _sweep_command(out: Path, dims: str) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "bench/test_divergence.py", "-v", "-p", "no:cacheprovider",
        "--benchmark-json", str(out),
        "--benchmark-max-time", "0.001", "--benchmark-min-rounds", "2",
        "--bench-backends", _backend(), "--bench-devices", "cpu", "--bench-models", "hollownet",
        "--bench-methods", "hollow,hutchinson", "--bench-modes", "eval", "--bench-n-probes", "1",
        "--bench-dims", dims,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLLOWBENCH_")}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


@pytest.mark.sweep
def test_kill_9_loses_no_finished_point(tmp_path):
    out = tmp_path / "out.json"
    journal_file = tmp_path / "out.journal.jsonl"
    log = tmp_path / "log.txt"
    cmd = _sweep_command(out, "2-9")  # 16 points, 0.5 s each at least
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env=_env(HOLLOWBENCH_INJECT="delay=0.5"))  # fmt: skip
        # Generous: under load the imports alone can take a minute; the loop ends at 3 points.
        deadline = time.monotonic() + 300
        while _points_in(journal_file) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    passed = {
        line.split(" PASSED")[0] for line in log.read_text().splitlines() if " PASSED" in line
    }
    records = journal.read(journal_file)
    points = [r for r in records if r["kind"] == "point"]
    assert records[0]["kind"] == "session" and "hollowbench" in records[0]["machine_info"]
    assert 3 <= len(points) < 16, "the kill came too late to test anything"
    assert passed <= {p["fullname"] for p in points}  # everything reported finished is there
    assert len(points) <= len(passed) + 1  # plus at most the point being reported at the kill
    for p in points:
        assert p["extra_info"]["status"] == "ok" and set(p["extra_info"]) >= SCHEMA_KEYS
        assert p["stats"]["median"] > 0 and p["stats"]["rounds"] >= 2
    assert not out.exists() or out.stat().st_size == 0  # the JSON is written only at the end


def _points_in(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(r["kind"] == "point" for r in journal.read(path))


@pytest.mark.sweep
def test_oom_timeout_and_error_are_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "out.json"
    faults = "oom=*hollow-d3-*,timeout=*hollow-d4-*,error=*hutchinson-m1-d2-*"
    # A limit no healthy point comes near on a loaded machine; only the injected sleep passes it.
    cmd = [*_sweep_command(out, "2-4"), "--bench-timeout", "20"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=_env(HOLLOWBENCH_INJECT=faults))  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr  # the injected error fails its test
    assert "1 failed, 3 passed, 2 skipped" in run.stdout, run.stdout[-5000:]
    result = json.loads(out.read_text())
    not_run = {r["params"]["d"]: r["extra_info"] for r in result["hollowbench"]["not_run"]}
    assert not_run[3]["status"] == "oom" and "MemoryError" in not_run[3]["reason"]
    assert not_run[4]["status"] == "timeout" and "20 s" in not_run[4]["reason"]
    assert not_run[2]["status"] == "error" and not_run[2]["method"] == "hutchinson"
    ok = result["benchmarks"]
    assert len(ok) == 3 and all(b["extra_info"]["status"] == "ok" for b in ok)
    assert all(set(b["extra_info"]) >= SCHEMA_KEYS for b in ok)
    assert {"torch", "jax", "gpus"} <= set(result["machine_info"]["hollowbench"])
    statuses = [r["extra_info"]["status"] for r in journal.read(tmp_path / "out.journal.jsonl")[1:]]
    assert sorted(statuses) == ["error", "ok", "ok", "ok", "oom", "timeout"]
    compare = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(out)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert compare.returncode == 0, compare.stderr
    assert "test_divergence[" in compare.stdout


@pytest.mark.sweep
def test_an_injected_burst_is_flagged_and_remeasured_in_a_sweep(tmp_path):
    """Run from one working directory, the JSON written to another by a relative path (the
    journal must sit beside the JSON, not in the working directory), with a burst of load
    injected into one point's timed rounds."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    # A budget well above the injected sleeps, so the burst lands inside the timed rounds.
    cmd = [*_sweep_command(Path("../elsewhere/out.json"), "8"), "--benchmark-max-time", "0.5"]
    cmd[cmd.index("bench/test_divergence.py")] = str(ROOT / "bench/test_divergence.py")
    run = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=180,
                         env=_env(HOLLOWBENCH_INJECT="noise=*-hollow-d8-*",
                                  PYTHONPATH=str(ROOT)))  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "noisy when IQR/median > " in run.stdout  # the rule is in the header
    result = json.loads((elsewhere / "out.json").read_text())
    assert Path(result["hollowbench"]["journal"]) == elsewhere / "out.journal.jsonl"
    assert _points_in(elsewhere / "out.journal.jsonl") == len(result["benchmarks"]) == 2
    assert not list(work.rglob("*.jsonl"))  # (pytest-benchmark makes its .benchmarks/ there)
    assert result["hollowbench"]["settings"]["noise_rule"]["max2_min"] > 1
    points = {b["extra_info"]["method"]: b for b in result["benchmarks"]}
    journaled = {
        r["extra_info"]["method"]: r for r in journal.read(elsewhere / "out.journal.jsonl")[1:]
    }
    hit = points["hollow"]["extra_info"]
    assert hit["remeasured"] is True and hit["noise"]["measurements"][0]["failed"]
    for method, point in points.items():
        info, stats = point["extra_info"], point["stats"]
        noise = info["noise"]
        kept = noise["measurements"][noise["kept"]]
        # The JSON's and the journal's stats are the kept measurement's, whichever it was.
        assert (stats["rounds"], stats["median"]) == (kept["rounds"], kept["median_s"])
        assert journaled[method]["stats"]["median"] == stats["median"]
        assert info["remeasured"] == (len(noise["measurements"]) == 2)
        assert info["noisy"] == bool(kept["failed"]) == bool(noise["failed"])
        assert info["cpu_share"] == kept["cpu_share"] and info["load_1m"] is not None
        assert info["gpu_processes"] is None and info["sm_clock_mhz"] is None  # CPU points


@pytest.mark.sweep
def test_bad_option_is_a_usage_error():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "--bench-dims", "8,a"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--bench-dims" in run.stderr and "'a' is not an integer" in run.stderr


def test_torch_variants_time_the_same_step():
    torch = pytest.importorskip("torch")
    from bench.workloads import operators
    from impls import HollowSpec, load_backend

    backend = load_backend("torch", "cpu")
    point = operators.Point("divergence", "torch", "cpu", "hollow", "hollownet", 4, 3, 1, "eval")
    net = backend.build(HollowSpec(dim=4, d_h=2))
    x = torch.randn(3, 4)
    fn, args, _ = operators.step(backend, net, x, point)
    eager, compile_s, peak = backend.compile_step(fn, args, "eager")
    assert eager is fn and compile_s is None and peak is None
    compiled, compile_s, _ = backend.compile_step(fn, args, "compile")
    assert compile_s > 0
    torch.testing.assert_close(compiled(*args), fn(*args))
    # hollow_forward's train step differentiates once, so it compiles: torch.compile traces the
    # k = 1 node, forward and written-out backward; in float64 the compiled fair step's values
    # and gradients equal the eager step's to 1e-10.
    net = backend.build(HollowSpec(dim=4, d_h=2, dtype="float64"), seed=4)
    point = operators.Point("divergence", "torch", "cpu", "hollow_forward", "hollownet", 4, 3, 1,
                       "train")  # fmt: skip
    fn, args, values_of = operators.step(backend, net, x.double(), point)
    compiled, compile_s, _ = backend.compile_step(fn, args, "compile")
    assert compile_s > 0
    compiled_values = values_of(compiled(*args))
    compiled_grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    torch.testing.assert_close(compiled_values, values_of(fn(*args)), rtol=0, atol=1e-10)
    for n, p in net.named_parameters():
        torch.testing.assert_close(compiled_grads[n], p.grad, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="unknown torch variant 'graph'"):
        backend.compile_step(fn, args, "graph")


def test_torch_compile_takes_one_point_after_another(monkeypatch):
    """The sweep compiles the same step at d after d. Hutchinson's probes (``randint``) take
    no symbolic sizes, so a compile that turned dynamic at the second d failed there. And every
    point is compiled: Dynamo keeps at most recompile_limit graphs per code object (here 1; 8
    by default) and ran later points eagerly under the "compile" name."""
    torch = pytest.importorskip("torch")
    from bench.workloads import operators
    from impls import HollowSpec, load_backend

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    backend = load_backend("torch", "cpu")
    graphs = torch._dynamo.utils.counters["stats"]
    for d in (4, 5):  # the second d is where it turned dynamic, and where the limit bit
        point = operators.Point("divergence", "torch", "cpu", "hutchinson", "hollownet", d, 3, 1,
                           "eval", n_probes=1)  # fmt: skip
        net = backend.build(HollowSpec(dim=d, d_h=2))
        fn, args, values_of = operators.step(backend, net, torch.randn(3, d), point)
        before = graphs["unique_graphs"]
        compiled, _, _ = backend.compile_step(fn, args, "compile")
        assert graphs["unique_graphs"] > before, f"d={d} ran eagerly"
        assert values_of(compiled(*args)).shape == (3,)


@pytest.mark.parametrize("backend_name", ["torch", "jax"])
@pytest.mark.parametrize("method", ["hollow", "hollow_forward", "hutchinson"])
def test_train_step_is_fair(backend_name, method):
    """The train step runs the model's forward once: f comes from the operator's own pass
    (value_and_*), not from a second net(x). Counted on the forward's first op, the
    conditioner for a HollowNet and the whole MLP for Hutchinson."""
    pytest.importorskip(backend_name)
    from bench.workloads import operators
    from impls import MLPSpec, load_backend

    backend = load_backend(backend_name, "cpu")
    hollow = method != "hutchinson"
    model = "hollownet" if hollow else "mlp_flop_matched"
    point = operators.Point("divergence", backend_name, "cpu", method, model, 4, 3, 1, "train",
                       n_probes=None if hollow else 1)  # fmt: skip
    spec = HollowSpec(dim=4, d_h=2) if hollow else MLPSpec(dim=4)
    net = backend.build(spec)
    x = backend.asarray(np.zeros((3, 4), dtype="float32"))
    calls = []
    cls = type(net)
    name = "conditioner" if hollow else "evaluate"
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    setattr(cls, name, counted)
    try:
        fn, args, _ = operators.step(backend, net, x, point)
        if backend_name == "jax":
            import jax

            with jax.disable_jit():  # no cached trace of the inner jit skips the count
                jax.make_jaxpr(fn)(*args)
        else:
            fn(*args)
    finally:
        setattr(cls, name, original)
    assert len(calls) == 1


# --- throughput: time predictions and compiling ahead --------------------------------------


def test_slow_min_rounds_follow_an_explicit_min_rounds():
    assert options.resolve({"preset": "paper"}).timing.slow_min_rounds == 3
    assert options.resolve({"preset": "paper"}, min_rounds=7).timing.slow_min_rounds == 7


def test_a_dense_point_predicted_past_its_limit_is_skipped_before_it_runs(tmp_path):
    sweep = _sweep(tmp_path, timeout="10")
    point = {"workload": "divergence", "method": "dense_loop", "model": "hollownet", "k": 1,
             "backend": "torch", "device": "cpu"}  # fmt: skip
    sweep.planner.learn(point | {"d": 64, "flops": 1000}, 0.5)
    sweep.planner.learn(point | {"d": 128, "flops": 2000}, 1.0)
    # d = 256 at 4000 FLOPs: 1.0 s x 2 x 2 = 4 s a call, 4 calls = 16 s > half of 10 s
    bench = _FakeBenchmark()
    with pytest.raises(pytest.skip.Exception, match="skipped: predicted 4 s a call x 4 calls"):
        sweep.run(bench, Case(_FakeBackend(), lambda: pytest.fail("built"), point | {"d": 256,
                  "flops": 4000}))  # fmt: skip
    assert "d = 128 took 1 s a call" in bench.extra_info["reason"]
    # another method, another model, or a limit it fits under: measured as usual
    for other in ({"method": "hollow"}, {"model": "mlp_flop_matched"}):
        sweep.run(_FakeBenchmark(), Case(_FakeBackend(), lambda: Task(lambda a: a + 1, (1,)),
                  point | other | {"d": 256, "flops": 4000}))  # fmt: skip
    sweep = _sweep(tmp_path, timeout="100")
    sweep.planner.learn(point | {"d": 128, "flops": 2000}, 1.0)
    sweep.run(bench := _FakeBenchmark(), Case(_FakeBackend(), lambda: Task(lambda a: a, (1,)),
              point | {"d": 256, "flops": 4000}))  # fmt: skip
    assert bench.extra_info["status"] == "ok"


class _PureBackend(_FakeBackend):
    """A JAX-like backend whose compilations take 0.2 s on a pool thread, and log when."""

    name, default_variant, pure_steps = "jax", "jit", True

    def __init__(self, log):
        self.log = log

    def lower_step(self, fn, args, variant):
        assert threading.current_thread() is threading.main_thread()  # Python: main thread

        def rest():
            time.sleep(0.2)
            if fn is _broken:
                raise RuntimeError("XLA could not compile this")
            self.log.append(("compiled", time.perf_counter(), threading.current_thread().name))
            return fn, 0.25, (123, "xla_memory_analysis")

        return rest


def _broken(a):
    return a


def test_a_window_is_compiled_in_parallel_before_its_points_are_timed(tmp_path):
    sweep, log = _sweep(tmp_path, compile_workers="3"), []
    backend = _PureBackend(log)

    def step(a):
        log.append(("timed", time.perf_counter(), threading.current_thread().name))
        return a

    fns = {f"test_x[{i}]": (_broken if i == 2 else step) for i in range(4)}

    def case(name):
        return Case(backend, lambda: Task(fns[name], (1,)), {"workload": "fake"})

    start = time.perf_counter()
    assert sweep.window.compile((name, lambda name=name: case(name)) for name in fns) == 4
    assert time.perf_counter() - start < 0.6  # 4 compilations of 0.2 s on 3 threads, not 0.8 s
    assert not sweep.window.wants("test_x[3]") and sweep.window.wants("test_x[4]")
    built_twice = Case(backend, lambda: pytest.fail("built twice"), {})
    for name, fn in fns.items():
        bench = _FakeBenchmark()
        bench.name = bench.fullname = name
        if fn is _broken:  # a failed compilation is recorded as the point's own error
            with pytest.raises(RuntimeError, match="XLA could not compile"):
                sweep.run(bench, built_twice)
            assert bench.extra_info["status"] == "error"
            continue
        sweep.run(bench, built_twice)
        info = bench.extra_info
        assert (info["compile_s"], info["compile_ahead"], info["status"]) == (0.25, 4, "ok")
    compiled = [t for kind, t, _ in log if kind == "compiled"]
    timed = [t for kind, t, _ in log if kind == "timed"]
    assert len(compiled) == 3 and len(timed) == 3 and max(compiled) < min(timed)
    assert all(thread != "MainThread" for kind, _, thread in log if kind == "compiled")


def test_a_window_stops_where_a_time_prediction_waits_on_it(tmp_path):
    sweep, backend = _sweep(tmp_path, compile_workers="4"), _PureBackend([])
    dense = {"workload": "divergence", "method": "dense_loop", "model": "hollownet", "flops": 1}

    def case(d):
        return lambda: Case(backend, lambda: Task(lambda a: a, (1,)), dense | {"d": d})

    assert sweep.window.compile((f"test_x[{d}]", case(d)) for d in (8, 16, 32)) == 1
    assert sweep.window.wants("test_x[16]")
    assert _sweep(tmp_path, compile_workers="0").window.wants("test_x[8]") is False


def test_a_torch_point_ends_a_window_and_is_described_once(tmp_path):
    """Torch steps are not pure, so nothing compiles ahead of them; a torch point reached
    first is marked, so that its run does not open a window of its own."""
    sweep, described = _sweep(tmp_path, compile_workers="2"), []

    def describe(name, backend):
        def case():
            described.append(name)
            return Case(backend, lambda: Task(lambda a: a, (1,)), {})

        return name, case

    points = [describe("test_x[0]", _FakeBackend()), describe("test_x[1]", _PureBackend([]))]
    assert sweep.window.compile(iter(points)) == 0 and described == ["test_x[0]"]
    assert not sweep.window.wants("test_x[0]") and sweep.window.wants("test_x[1]")
    assert sweep.window.compile(iter(points[::-1])) == 1  # a JAX window ends at a torch point
    assert not sweep.window.wants("test_x[1]") and not sweep.window.wants("test_x[0]")


@pytest.mark.sweep
def test_a_jax_sweep_compiles_ahead_and_reuses_its_cache(tmp_path):
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    cmd = [*_sweep_command(tmp_path / "out.json", "2,3"), "--bench-backends", "jax",
           "--bench-jax-cache", str(cache), "--bench-compile-workers", "2"]  # fmt: skip
    results = []
    for attempt in ("cold", "warm"):
        out = tmp_path / f"{attempt}.json"
        cmd[cmd.index("--benchmark-json") + 1] = str(out)
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env=_env())  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results.append(json.loads(out.read_text()))
    for result, cached in zip(results, ("miss", "hit"), strict=True):
        assert result["hollowbench"]["settings"]["jax_cache"] == str(cache)
        infos = [b["extra_info"] for b in result["benchmarks"]]
        assert len(infos) == 4 and all(i["backend"] == "jax" and i["status"] == "ok" for i in infos)
        assert {i["compile_ahead"] for i in infos} == {4}  # 2 workers: a window of 4
        assert {i["compile_cache"] for i in infos} == {cached}
        assert all(i["compile_s"] > 0 for i in infos)
        assert all(i["error"] < 1e-4 for i in infos if i["error_kind"] == "max_abs")
    assert any(cache.iterdir())


# --- sweeping the model: --bench-spec and --bench-model-factory (issue 28) ----------------


def test_spec_fields_parse_into_axes():
    s = options.resolve(
        {"spec": "trans_hidden=64-64,128-128; activation=tanh,softplus;cond_hidden=none,16"}
    )
    assert s.specs == (
        ("trans_hidden", ((64, 64), (128, 128))),
        ("activation", ("tanh", "softplus")),
        ("cond_hidden", ((), (16,))),
    )
    raw = "d_h=4,8;time_dependent=true,false;dtype=float64;conditioner=made"
    s = options.resolve({"spec": raw})
    assert dict(s.specs) == {
        "d_h": (4, 8), "time_dependent": (True, False), "dtype": ("float64",),
        "conditioner": ("made",),
    }  # fmt: skip
    assert s.describe()["spec"]["d_h"] == [4, 8]
    assert options.resolve({}).specs == () and {f"spec_{f}" for f in options.SPEC_FIELDS} == set(
        SPEC_KEYS
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("width=8", "unknown field 'width'; choose from d_h, cond_hidden, trans_hidden, activ"),
        ("activation=relu", "unknown activation 'relu'; choose from tanh, sigmoid, softplus, sin"),
        ("trans_hidden=64-x", "'64-x' is not widths like 64-64 (or none, no layer)"),
        ("d_h=0", "'0' is not a positive integer"),
        ("time_dependent=maybe", "'maybe' is not true or false"),
        ("conditioner=dense", "choose from masked, made"),
        ("dtype=float16", "choose from float32, float64"),
        ("activation", "is not FIELD=V1,V2"),
        ("activation=tanh;activation=sin", "activation is given twice"),
    ],
)
def test_a_bad_spec_names_the_choices(value, words):
    with pytest.raises(options.OptionError) as err:
        options.resolve({"spec": value})
    assert "--bench-spec (or $HOLLOWBENCH_SPEC)" in str(err.value) and words in str(err.value)


def test_the_spec_option_repeats_and_its_variable_joins_fields(monkeypatch):
    cli = {"bench_spec": ["trans_hidden=32", "activation=sin,tanh"]}
    s = options.from_config(_Config(**cli))
    assert s.specs == (("trans_hidden", ((32,),)), ("activation", ("sin", "tanh")))
    monkeypatch.setenv("HOLLOWBENCH_SPEC", "d_h=2;activation=sin")
    assert options.from_config(_Config()).specs == (("d_h", (2,)), ("activation", ("sin",)))


def test_the_custom_model_needs_a_factory():
    with pytest.raises(options.OptionError, match="custom is the model of --bench-model-factory"):
        options.resolve({"models": "custom"})
    assert options.resolve({"models": "all"}).models == presets.MODELS
    s = options.resolve({"model_factory": "own_models:mlp"})
    assert s.models == (*presets.MODELS, "custom") and s.model_factory == "own_models:mlp"
    assert options.resolve({"model_factory": "m:f", "models": "custom"}).models == ("custom",)
    with pytest.raises(options.OptionError, match="is not module:function"):
        options.resolve({"model_factory": "own_models.mlp"})
    with pytest.raises(options.OptionError, match="cannot import 'no_such_module'"):
        options.load_factory("no_such_module:build")
    with pytest.raises(options.OptionError, match="own_models has no function 'nope'"):
        options.load_factory("own_models:nope")


def test_spec_axes_multiply_the_grid_and_name_the_points():
    raw = {"dims": "32", "methods": "hollow_forward,hutchinson", "n_probes": "1"}
    plain = operators.DIVERGENCE.points(options.resolve(raw), {"torch": ("cpu",)})
    swept = operators.DIVERGENCE.points(
        options.resolve(raw | {"spec": "trans_hidden=64-64,128-128;activation=tanh,softplus"}),
        {"torch": ("cpu",)},
    )
    assert len(swept) == 4 * len(plain) and all(p.spec is None for p in plain)
    pairs = [(t, a) for t in ("64-64", "128-128") for a in ("tanh", "softplus")]
    assert {p.spec for p in swept} == {f"trans_hidden={t},activation={a}" for t, a in pairs}
    p = next(p for p in swept if p.spec == "trans_hidden=128-128,activation=softplus")
    assert p.arch == (("trans_hidden", (128, 128)), ("activation", "softplus"))
    assert "-hollownet(trans_hidden=128-128,activation=softplus)-" in p.id
    assert p.param_dict()["spec"] == p.spec and plain[0].param_dict()["spec"] is None
    spec = operators.model_spec("mlp_flop_matched", 32, p.arch)
    assert (
        spec.activation == "softplus"
        and spec.flops
        == flop_matched_mlp(
            HollowSpec(dim=32, trans_hidden=(128, 128), activation="softplus")
        ).flops
    )
    # the custom model once per point, whatever the specs; its hollow methods are generated
    raw |= {"spec": "activation=tanh,sin", "model_factory": "own_models:mlp", "models": "custom"}
    custom = operators.DIVERGENCE.points(options.resolve(raw), {"torch": ("cpu",)})
    assert {p.arch for p in custom} == {()} and {p.method for p in custom} == {
        "hollow_forward", "hutchinson"
    }  # fmt: skip


@pytest.mark.parametrize("backend_name", ["torch", "jax"])
def test_a_custom_point_runs_its_methods_or_says_why_not(tmp_path, backend_name):
    """The user's model: dense and stochastic methods run, with an error figure against its
    float64 copy; a hollow method is skipped unless the model is a HollowNet; a model that
    cannot be cast to float64 runs without an error figure, and the reason says why."""
    pytest.importorskip(backend_name)

    def run(factory: str, method: str, mode: str = "eval") -> dict:
        sweep, bench = _sweep(tmp_path, model_factory=factory), _FakeBenchmark()
        probes = 2 if method == "hutchinson" else None
        point = Point("divergence", backend_name, "cpu", method, "custom", 4, 3, 1, mode, probes)
        with contextlib.suppress(pytest.skip.Exception):  # a point not run: its info tells
            sweep.run(bench, operators.DIVERGENCE.case(sweep, point))
        return bench.extra_info

    for method, mode in [("dense_loop", "train"), ("dense_vectorized", "eval")]:
        info = run("own_models:mlp", method, mode)
        assert info["status"] == "ok" and info["error"] < 1e-5 and info["error_kind"] == "max_abs"
        assert info["model_spec"]["factory"] == "own_models:mlp"
        assert info["n_params"] == 4 * 6 * 2 + 6 + 4  # (4, 6), (6,), (6, 4), (4,)
        assert info["dtype"] == "float32" and info["model_factory"] == "own_models:mlp"
    info = run("own_models:mlp", "hutchinson")
    assert info["status"] == "ok" and info["error_kind"] == "rel_std" and info["error"] > 0
    info = run("own_models:mlp", "hollow")
    assert info["status"] == "skipped"
    assert info["reason"].startswith("hollow methods need a HollowNet: MLP has no conditioner")
    info = run("own_models:hollownet", "hollow_forward")
    assert info["status"] == "ok" and info["error"] < 1e-5
    info = run("own_models:uncastable", "dense_loop")
    assert info["status"] == "ok" and info["error"] is None
    assert "no float64 reference: cannot cast" in info["reason"]


@pytest.mark.parametrize("backend_name", ["torch", "jax"])
def test_a_time_dependent_spec_runs_at_a_fixed_t(tmp_path, backend_name):
    pytest.importorskip(backend_name)
    sweep = _sweep(tmp_path, spec="time_dependent=true")
    arch = (("time_dependent", True),)
    for method, model in [("hollow", "hollownet"), ("hutchinson", "mlp_flop_matched")]:
        bench = _FakeBenchmark()
        probes = 1 if method == "hutchinson" else None
        point = Point("divergence", backend_name, "cpu", method, model, 4, 3, 1, "train", probes,
                      arch=arch)  # fmt: skip
        sweep.run(bench, operators.DIVERGENCE.case(sweep, point))
        info = bench.extra_info
        assert info["status"] == "ok" and info["spec_time_dependent"] is True, info["reason"]
        assert info["model_spec"]["time_dependent"] and info["spec"] == "time_dependent=true"
        assert info["error"] < (1e-5 if method == "hollow" else 10)


@pytest.mark.sweep
def test_the_model_factory_example_sweeps(tmp_path):
    """examples/my_model.py in a sweep, as the README shows it, in each installed backend (one
    sweep for both): dense and stochastic methods run on it, the hollow methods are skipped
    with the reason."""
    backends = [name for name in ("torch", "jax") if importlib.util.find_spec(name)]
    if not backends:
        pytest.skip("neither torch nor jax is installed")
    out = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "pytest", "bench/test_divergence.py", "-q", "-p", "no:cacheprovider",
        "--bench-model-factory", "examples.my_model:build", "--bench-models", "custom",
        "--bench-dims", "8", "--bench-backends", ",".join(backends), "--bench-devices", "cpu",
        "--bench-modes", "eval", "--bench-n-probes", "1", "--benchmark-json", str(out),
        "--benchmark-max-time", "0.001", "--benchmark-min-rounds", "2",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    ran = {(b["extra_info"]["backend"], b["extra_info"]["method"]) for b in result["benchmarks"]}
    assert ran == {
        (b, m) for b in backends for m in ("dense_loop", "dense_vectorized", "hutchinson")
    }
    assert all(b["extra_info"]["error"] is not None for b in result["benchmarks"])
    skipped = [r["extra_info"] for r in result["hollowbench"]["not_run"]]
    assert {(s["backend"], s["method"]) for s in skipped} == {
        (b, m) for b in backends for m in ("hollow", "hollow_forward")
    }
    assert all(s["status"] == "skipped" for s in skipped)
    assert all("hollow methods need a HollowNet" in s["reason"] for s in skipped)
