"""The GPU path, checked on the CPU: the XLA flag only where it applies and is known, compile-ahead
bounded on a GPU, CNF budget points that fit their limit, and the reference run's shape (one
process per backend, at most 8 files back, inside its 8 minutes)."""

from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import pytest

from bench import conftest, reference
from bench.harness import ahead, options, xla
from bench.workloads import cnf

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax")


@needs_jax
def test_xla_flags_are_tried_in_a_child_before_they_are_used():
    assert xla.accepts(xla.CPU_SCHEDULER_OFF) and xla.accepts(xla.CPU_THUNK_TRACES)
    assert not xla.accepts("--xla_no_such_flag_anywhere=true")


@pytest.mark.parametrize(
    ("raw", "added"),
    [
        ({"backends": "jax", "devices": "cpu"}, True),
        ({}, True),  # cpu and every GPU
        ({"backends": "jax", "devices": "cuda:0"}, False),  # JAX never starts its CPU client
        ({"backends": "torch", "devices": "cpu"}, False),
    ],
)
def test_the_xla_cpu_flag_goes_only_where_jax_runs_on_the_cpu(monkeypatch, raw, added):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(xla, "accepts", lambda flags: True)
    conftest._avoid_xla_cpu_deadlock(options.resolve(raw))
    assert (xla.CPU_SCHEDULER_OFF in os.environ.get("XLA_FLAGS", "")) == added
    monkeypatch.setattr(xla, "accepts", lambda flags: False)  # an XLA without it
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    conftest._avoid_xla_cpu_deadlock(options.resolve(raw))
    assert "XLA_FLAGS" not in os.environ
    # The user's own setting of the flag wins.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true")
    monkeypatch.setattr(xla, "accepts", lambda flags: True)
    conftest._avoid_xla_cpu_deadlock(options.resolve(raw))
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"


def test_compile_ahead_uses_few_threads_on_a_gpu():
    settings = options.resolve({"compile_workers": "16"})
    window = ahead.Window(settings, planner=None, identify=lambda case: {})
    on = {name: types.SimpleNamespace(device=name) for name in ("cpu", "cuda:0")}
    assert window._workers(on["cpu"]) == 16
    assert window._workers(on["cuda:0"]) == ahead.GPU_COMPILE_WORKERS < 16


def test_a_cnf_budget_point_trains_within_half_its_limit():
    paper = cnf.PRESETS["paper"]
    assert cnf.training_s(options.resolve({"preset": "paper", "timeout": "30"}), paper) == 15
    asked = options.resolve({"preset": "paper", "timeout": "0", "cnf_budget_s": "5"})
    assert cnf.training_s(asked, paper) == 5  # the option, and no limit to fit


def test_the_reference_run_fits_its_lease_and_hands_back_eight_files(tmp_path):
    out = tmp_path / "out"
    smoke = reference.smoke_steps("python", "cuda:0", out)
    stage = reference.reference_steps("python", "cuda:0", out, "costs", tmp_path / "scratch")
    assert sum(s.limit_s for s in smoke) <= reference.SMOKE_S
    assert sum(s.limit_s for s in stage) <= reference.REFERENCE_S
    assert reference.SMOKE_S + reference.REFERENCE_S <= reference.TOTAL_S <= 8 * 60
    for steps in (smoke[2:], stage):  # one backend per process: JAX's pool, CUPTI
        backends = [s.argv[s.argv.index("--backends" if "bench.profile" in s.argv else
                    "--bench-backends") + 1] for s in steps]  # fmt: skip
        assert sorted(set(backends)) == sorted(reference.BACKENDS)
    written = {"commands.txt", "logs.txt", "profile.json"}
    for step in smoke + stage:
        argv = step.argv
        if "--benchmark-json" in argv:  # its journal lands beside it
            path = Path(argv[argv.index("--benchmark-json") + 1])
            written |= {path, path.with_suffix(".journal.jsonl")}
        if "--bench-journal" in argv:
            written.add(Path(argv[argv.index("--bench-journal") + 1]))
    files = [p for p in written if isinstance(p, Path)]
    assert all(p.parent == out for p in files)  # nothing in a folder
    assert len(written) <= 8, sorted(map(str, written))
    # the fused kernels' steps are profiled first, before their base variants
    for step in stage[::2]:
        variants = step.argv[step.argv.index("--variants") + 1].split(",")
        assert variants[0] in ("triton", "pallas")
