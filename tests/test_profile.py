"""``python -m bench.profile`` on the CPU: it profiles the very steps the sweep times."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import profile

pytest.importorskip("torch")
pytest.importorskip("jax")


def test_profile_times_and_breaks_down_each_step(tmp_path):
    argv = ["--dims", "8", "--batch", "4", "--calls", "2", "--rows", "3", "--out", str(tmp_path)]
    assert profile.main(argv) == 0
    results = json.loads((tmp_path / "profile.json").read_text())
    assert [r["id"] for r in results] == [
        "torch-cpu-hollownet-hollow-d8-b4-k1-train",
        "torch-cpu-mlp_flop_matched-hutchinson-m1-d8-b4-k1-train",
        "jax-cpu-hollownet-hollow-d8-b4-k1-train",
        "jax-cpu-mlp_flop_matched-hutchinson-m1-d8-b4-k1-train",
    ]
    for r in results:
        assert "error" not in r, r
        assert r["ms_per_call"] > 0
        assert r["busy"] is None  # only a GPU's kernel time says whether it waited
    for torch_step in results[:2]:
        assert 1 <= len(torch_step["top"]) <= 3
        assert all(k["ms_per_call"] > 0 for k in torch_step["top"])
    for jax_step in results[2:]:  # and XLA's cost analysis (its thunks: the next test)
        assert jax_step["xla_flops"] > 0 and jax_step["xla_bytes"] > 0
        assert jax_step["compile_s"] > 0
    text = (tmp_path / "profile.md").read_text()
    assert text.count("\n## ") == 4 and "| kernel / op | ms per call | share |" in text


@pytest.mark.slow
def test_a_jax_cpu_profile_times_xlas_thunks(tmp_path):
    """In a fresh process, bench.profile turns XLA's per-thunk traces on before JAX starts: a
    JAX CPU step's table lists its fusions and dots with their times."""
    argv = ["--backends", "jax", "--dims", "8", "--batch", "4", "--calls", "2", "--rows", "40"]
    run = subprocess.run(
        [sys.executable, "-m", "bench.profile", *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ | {"XLA_FLAGS": ""},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for step in json.loads((tmp_path / "profile.json").read_text()):
        names = [k["name"] for k in step["top"]]
        assert any("fusion" in n for n in names) and any("dot" in n for n in names), names
        assert all(k["ms_per_call"] > 0 for k in step["top"]) and "note" not in step


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    real_step = profile.operators.step

    def step(backend, net, x, point):
        if point.method == "hollow_forward":
            raise RuntimeError("injected: hollow_forward broke")
        return real_step(backend, net, x, point)

    monkeypatch.setattr(profile.operators, "step", step)
    argv = ["--backends", "torch", "--dims", "8", "--methods", "hollow_forward,hollow"]
    assert profile.main([*argv, "--batch", "2", "--calls", "1", "--out", str(tmp_path)]) == 0
    first, second = json.loads((tmp_path / "profile.json").read_text())
    assert "hollow_forward broke" in first["error"] and "error" not in second


def test_a_cpu_step_on_a_gpu_machine_lists_its_cpu_ops(tmp_path, monkeypatch):
    """The kernel table follows the device profiled, not the machine: ``--device cpu`` where
    CUDA is available still lists the CPU ops (there are no CUDA events to keep)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    argv = ["--backends", "torch", "--dims", "8", "--methods", "hollow", "--batch", "2"]
    assert profile.main([*argv, "--calls", "2", "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "profile.json").read_text())
    assert result["top"] and all(k["ms_per_call"] > 0 for k in result["top"])


def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        profile.main(["--dims", "8,x", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "'8,x' is not a comma-separated" in capsys.readouterr().err
    assert profile.main(["--device", "tpu", "--out", str(tmp_path)]) == 2
    assert "tpu" in capsys.readouterr().err
    for flag, value in (("--methods", "hollow,bogus"), ("--variants", "graph")):
        with pytest.raises(SystemExit) as exit_info:
            profile.main([flag, value, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and flag in err and "unknown '" in err
        assert "choose from" in err
    with pytest.raises(SystemExit) as exit_info:  # CUPTI: one framework's profiler a process
        profile.main(["--device", "cuda:0", "--backends", "torch,jax", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "one backend per process" in capsys.readouterr().err


def test_variants_are_profiled_in_the_order_asked():
    from impls import load_backend

    words = ["--device", "cuda:0", "--variants", "triton,eager", "--methods", "hollow_forward"]
    args = profile._parser().parse_args(words)
    variants = [p.variant for p in profile._points(load_backend("torch", "cpu"), args)]
    assert variants[0] == "triton" and variants[-1] == "eager"


def test_the_triton_variant_profiles_hollow_forward_at_k1_on_a_gpu_only():
    from impls import load_backend

    torch_backend = load_backend("torch", "cpu")
    words = ["--workload", "ddim", "--k", "1,2", "--methods", "hollow,hollow_forward"]
    words += ["--variants", "eager,triton"]
    on_gpu = profile._points(
        torch_backend, profile._parser().parse_args([*words, "--device", "cuda:0"])
    )
    fused = [(p.method, p.k) for p in on_gpu if p.variant == "triton"]
    assert fused == [("hollow_forward", 1)]
    assert len([p for p in on_gpu if p.variant == "eager"]) == 4
    on_cpu = profile._points(torch_backend, profile._parser().parse_args(words))
    assert {p.variant for p in on_cpu} == {"eager"}
