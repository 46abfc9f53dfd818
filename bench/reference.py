"""The reference run of one device, planned to fit a lent GPU machine: one command of at most
TOTAL_S seconds (8 minutes), so a 15-minute lease has room to run it twice.

    python -m bench.reference OUT [--device cuda:0] [--costs GLOB]

(``reports/reference/run_reference.sh`` wraps it.) Stage 0, the smoke check (at most SMOKE_S):
versions and the XLA flags JAX starts with; the fused-kernel tests on the device, one autotuning
config each; every variant of the fair train step at a small and a large d, one process per
backend. Any failure there makes the exit status non-zero, but the reference still runs. Stage
1 (at most REFERENCE_S): per backend, in its own process (JAX's memory pool never shrinks, and
CUPTI takes one profiler), a short profile of the fused and plain steps, then the paper preset
under ``--bench-budget`` (bench/harness/plan.py: the claims' and goals' points first, at a
spread of d), its costs predicted from the journals of ``--costs``.

OUT gets at most 8 files, none in a folder, so a remote machine can hand them all back:
``commands.txt`` (each step's command, exit status and wall time), ``logs.txt`` (their output),
``smoke.journal.jsonl``, ``<backend>.json`` and ``<backend>.journal.jsonl``, and
``profile.json`` (``bench.profile``'s, both backends).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTAL_S = 480
SMOKE_S = 150
PROFILE_S = 20  # per backend
# Each backend's --bench-budget: JAX compiles every point (~3 s on a GPU), so it gets more.
BUDGET_S = {"torch": 110, "jax": 150}
GRACE_S = 15  # past a limit: SIGINT (pytest-benchmark writes its JSON), then this, then SIGKILL
REFERENCE_S = sum(PROFILE_S + budget + GRACE_S for budget in BUDGET_S.values())
MAX_TIME = 0.2  # --benchmark-max-time: each point's timing budget
COSTS = {  # the journals that predict each kind of device's costs
    "cuda": "reports/reference/nvidia-h100/**/*.journal.jsonl",
    "cpu": "reports/reference/cpu/**/*.journal.jsonl",
}
BACKENDS = ("torch", "jax")
VARIANTS = {"torch": "triton,eager,cudagraph,compile", "jax": "pallas,jit"}  # fused first
PROFILED = {"torch": "triton,eager,cudagraph", "jax": "pallas,jit"}  # torch.compile: ~11 s each
SMOKE_POINTS_S = {"torch": 45, "jax": 25}  # torch.compile's two points take ~11 s each on a GPU
# One autotuning config per fused Triton kernel (impls/torch_backend/fused_tau.py).
ONE_CONFIG = {"HOLLOWBENCH_TRITON_CONFIGS": "1"}
VERSIONS = """
import os, platform
print("python", platform.python_version(), "| XLA_FLAGS:", os.environ.get("XLA_FLAGS", ""))
for name in ("torch", "triton", "jax", "jaxlib", "equinox", "diffrax", "torchdiffeq", "numpy",
             "pytest_benchmark"):
    try:
        print(name, getattr(__import__(name), "__version__", "?"))
    except ImportError:
        print(name, "not installed")
import torch
print("torch CUDA", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())
import jax
print("jax devices", jax.devices())
"""


@dataclass(frozen=True)
class Step:
    """One command of the run, under its own limit, in ``env`` on top of the environment."""

    name: str
    argv: list[str]
    limit_s: float
    env: dict[str, str] | None = None


def sweep_options(device: str, backend: str, costs: str) -> dict[str, str]:
    """The ``--bench-*`` options of stage 1's sweep on ``backend`` (options.resolve's raw
    dict, with --benchmark-max-time MAX_TIME beside it): the test plans from the same."""
    return {
        "preset": "paper",
        "backends": backend,
        "devices": device,
        "budget": str(BUDGET_S[backend]),
        "costs": costs,
        "timeout": "30",
        "matmul_precision": "tf32",
    }


def _flags(raw: dict[str, str]) -> list[str]:
    return [a for dest, value in raw.items() for a in (f"--bench-{dest.replace('_', '-')}", value)]


def smoke_steps(py: str, device: str, out: Path) -> list[Step]:
    on_gpu = device.startswith("cuda")
    kernels = [py, "-m", "pytest", "tests/test_fused_tau.py", "tests/test_fused_tau_jax.py"]
    kernels += ["-q", "-rs", "-x", "-p", "no:cacheprovider"]
    steps = [Step("versions", [py, "-c", VERSIONS], 20)]
    steps.append(Step("kernel tests", kernels, 60, ONE_CONFIG))
    for backend in BACKENDS:
        points = {
            "preset": "paper",
            "backends": backend,
            "devices": device,
            "dims": "128,4096" if on_gpu else "8",  # torch.compile: 15-30 s a point on a CPU
            "methods": "hollow_forward,hutchinson",
            "models": "hollownet,mlp_flop_matched",
            "modes": "train",
            "n_probes": "1",
            "variants": VARIANTS[backend],
            "timeout": "30",
            "matmul_precision": "tf32",
            "journal": str(out / "smoke.journal.jsonl"),
        }
        argv = [py, "-m", "pytest", "bench/test_divergence.py", "-q", "-p", "no:cacheprovider"]
        argv += [*_flags(points), "--benchmark-max-time", "0.05"]
        steps.append(Step(f"smoke points {backend}", argv, SMOKE_POINTS_S[backend], ONE_CONFIG))
    return steps


def reference_steps(py: str, device: str, out: Path, costs: str, scratch: Path) -> list[Step]:
    on_gpu = device.startswith("cuda")
    steps = []
    for backend in BACKENDS:
        profile = ["--backends", backend, "--device", device, "--mode", "train"]
        sizes = ("128,4096", "10") if on_gpu else ("32", "3")  # a CPU step at d = 128: ~1 s
        profile += ["--dims", sizes[0], "--calls", sizes[1]]
        profile += ["--matmul-precision", "tf32"]
        profile += ["--methods", "hollow_forward,hutchinson", "--variants", PROFILED[backend]]
        profile += ["--out", str(scratch / backend)]
        steps.append(Step(f"profile {backend}", [py, "-m", "bench.profile", *profile], PROFILE_S))
        argv = [py, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider"]
        argv += [*_flags(sweep_options(device, backend, costs)), "--benchmark-max-time"]
        argv += [str(MAX_TIME), "--benchmark-json", str(out / f"{backend}.json")]
        steps.append(Step(f"reference {backend}", argv, BUDGET_S[backend] + GRACE_S))
    return steps


def run(step: Step, limit_s: float, commands, logs) -> int:
    """Run ``step`` under ``limit_s`` (SIGINT, then SIGKILL GRACE_S later), its output into
    ``logs``, its command, exit status and wall time into ``commands``; 124 past the limit."""
    commands.write(f"== {step.name} (limit {limit_s:.0f} s): {' '.join(step.argv)}\n")
    logs.write(f"\n===== {step.name}\n")
    commands.flush()
    logs.flush()
    env = os.environ | {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(step.argv, cwd=ROOT, env=env | (step.env or {}), stdout=logs,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        code = proc.wait(timeout=max(limit_s, 1))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        code = 124
    commands.write(f"   exit {code} in {time.monotonic() - start:.1f} s\n")
    commands.flush()
    return code


def smoke_failures(journal: Path) -> list[str]:
    """The smoke points that errored, ran out of memory or timed out."""
    if not journal.exists():
        return []
    records = (json.loads(line) for line in journal.read_text().splitlines() if line.strip())
    return [
        f"{r['name']}: {r['extra_info']['status']}"
        for r in records
        if r.get("kind") == "point" and r["extra_info"]["status"] in ("error", "oom", "timeout")
    ]


def merge_profiles(scratch: Path, out: Path) -> None:
    """Every backend's profile.json, one list, into OUT/profile.json."""
    found = [json.loads(p.read_text()) for p in sorted(scratch.glob("*/profile.json"))]
    (out / "profile.json").write_text(json.dumps([r for rows in found for r in rows], indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__)
    parser.add_argument("out", type=Path, help="folder of the results (at most 8 files)")
    parser.add_argument("--device", default="cuda:0", help="cuda:0 (default) or cpu")
    parser.add_argument("--costs", help="journals (globs) predicting costs (default: by device)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    costs = args.costs or str(ROOT / COSTS[kind])
    args.out.mkdir(parents=True, exist_ok=True)
    start, codes = time.monotonic(), []
    with (
        open(args.out / "commands.txt", "a") as commands,
        open(args.out / "logs.txt", "a") as logs,
        tempfile.TemporaryDirectory() as scratch,
    ):
        commands.write(f"# python -m bench.reference {' '.join(argv or sys.argv[1:])}\n")
        stages = [
            ("smoke", SMOKE_S, smoke_steps(args.python, args.device, args.out)),
            ("reference", REFERENCE_S, reference_steps(
                args.python, args.device, args.out, costs, Path(scratch))),
        ]  # fmt: skip
        for stage, stage_s, steps in stages:
            stage_end = time.monotonic() + stage_s
            commands.write(f"# stage {stage}: at most {stage_s} s\n")
            for step in steps:
                left = min(stage_end, start + TOTAL_S) - time.monotonic()
                codes.append(run(step, min(step.limit_s, left), commands, logs))
            if stage == "smoke":
                failed = smoke_failures(args.out / "smoke.journal.jsonl")
                commands.writelines(f"   smoke failure: {f}\n" for f in failed)
                codes.append(1 if failed else 0)
        merge_profiles(Path(scratch), args.out)
        commands.write(f"# done in {time.monotonic() - start:.0f} s\n")
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
