"""Profile the steps the sweep times: where a hollow or Hutchinson step spends its time.

    python -m bench.profile --backends torch --device cuda:0 --dims 128,4096 --out profiles/

One backend per process on a GPU: CUPTI takes one subscriber, so a second framework's profiler
in the same process finds none and its kernel times are lost.

Writes ``profile.json`` and ``profile.md``: per step, wall ms, NVML joules, power and utilisation
per call; the top kernels (GPU), ops (torch on a CPU) or XLA thunks (JAX on a CPU: fusions, dots,
copies) and ``busy``, their time over the wall time (far below 1: the device waits on the host);
for JAX, XLA's cost analysis.
"""

from __future__ import annotations

import os

# Before JAX is imported: its pool would otherwise take 75% of the GPU at once.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import collections
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import xla
from bench.harness.options import PRECISIONS, choices, ints
from bench.harness.presets import ALL_VARIANTS
from bench.harness.telemetry import NVML, EnergyMeter
from bench.workloads import operators
from bench.workloads.operators import Point, variant_applies
from impls import ESTIMATORS, FUSED_VARIANTS, METHODS, load_backend

WARMUP_CALLS = 3
METER_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and "," in args.backends:
        parser.error(
            f"--backends {args.backends} on {args.device}: one backend per process on a GPU "
            "(CUPTI takes one profiler); run once per backend, each with its own --out"
        )
    if args.device == "cpu" and "jax" in args.backends.split(","):
        # The sweep's XLA configuration, and per-thunk times (read when JAX makes its client).
        xla.add_flag(xla.CPU_SCHEDULER_OFF)
        xla.add_flag(xla.CPU_THUNK_TRACES)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for backend_name in args.backends.split(","):
        try:
            backend = load_backend(backend_name, args.device)
        except (ImportError, ValueError) as exc:
            print(f"python -m bench.profile: {exc}", file=sys.stderr)
            return 2
        backend.set_matmul_precision(args.matmul_precision)
        for point in _points(backend, args):
            print(f"profiling {point.id}", file=sys.stderr, flush=True)
            try:
                results.append(profile(backend, point, args.calls, args.rows))
            except Exception as exc:  # one failing step must not lose the others' profiles
                results.append({"id": point.id, "error": f"{type(exc).__name__}: {exc}"[:500]})
            # After every step: a run stopped at its time limit keeps what it profiled.
            (out / "profile.json").write_text(json.dumps(results, indent=1))
            (out / "profile.md").write_text(markdown(results))
    print(f"wrote {out / 'profile.md'} and profile.json ({len(results)} steps)")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="torch,jax")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dims", type=_typed(ints(1)), default="128", help="e.g. 128,4096")
    p.add_argument("--methods", type=_typed(choices(METHODS)), default="hollow,hutchinson")
    p.add_argument("--mode", default="train", choices=("eval", "train"))
    p.add_argument("--workload", default="divergence", choices=("divergence", "ddim"))
    p.add_argument(
        "--k", type=_typed(ints(1)), default="1", help="derivative orders (ddim), e.g. 1,4"
    )
    variants = _typed(choices(ALL_VARIANTS))
    p.add_argument(
        "--variants", type=variants, default="eager,cudagraph,jit", help="those a backend has"
    )
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--calls", type=int, default=20, help="calls timed, and profiled")
    p.add_argument("--rows", type=int, default=10, help="top kernels listed per step")
    p.add_argument("--matmul-precision", default="default", choices=PRECISIONS)
    p.add_argument("--out", default="profiles")
    return p


def _typed(parse: Callable[[str], tuple]) -> Callable[[str], list]:
    """An argparse type from a ``--bench-*`` option's parser: a list, or argparse's message."""

    def typed(raw: str) -> list:
        try:
            return list(parse(raw))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{raw!r} is not a comma-separated list: {exc}"
            ) from None

    return typed


ESTIMATOR_BUDGET = 12  # Jacobian-vector products of hutchpp, xtrace and xdiag, as in quick


def _points(backend, args) -> list[Point]:
    variants = [v for v in args.variants if v in backend.variants]  # in the order asked
    if args.device == "cpu":  # GPU-only variants (the fused ones' interpreters are for tests)
        variants = [v for v in variants if v != "cudagraph" and v not in FUSED_VARIANTS]
    ks = [1] if args.workload == "divergence" else args.k
    points = []
    for variant in variants or [backend.default_variant]:
        for method in args.methods:
            model = "mlp_flop_matched" if method == "hutchinson" else "hollownet"
            probes = 1 if method == "hutchinson" else None
            budget = ESTIMATOR_BUDGET if method in ESTIMATORS else None
            for d, k in itertools.product(args.dims, ks):
                where = (backend.name, args.device, method, model, d, args.batch, k, args.mode)
                point = Point(args.workload, *where, probes, variant, budget)
                if variant not in FUSED_VARIANTS or variant_applies(point):  # hollow_forward, k=1
                    points.append(point)
    return points


def profile(backend, point: Point, calls: int, rows: int) -> dict[str, Any]:
    """Time, meter and profile ``point``'s step; one JSON-ready dict."""
    spec = operators.model_spec(point.model, point.d)
    net = backend.build(spec, seed=operators.MODEL_SEED)
    x = backend.asarray(operators.data(point.batch, point.d, spec.dtype))
    fn, args, _ = operators.step(backend, net, x, point)
    fn, compile_s, _ = backend.compile_step(fn, args, point.variant)
    info: dict[str, Any] = {"id": point.id, "flops_model": spec.flops * point.batch}
    if compile_s is not None:
        info |= {"compile_s": compile_s, **_xla_costs(fn)}

    def call():
        out = fn(*args)
        backend.sync(out)
        return out

    for _ in range(WARMUP_CALLS):
        call()
    info |= _metered(call, calls, backend.device)
    times, busy_us = backend.kernel_times(call, calls)
    kernels = collections.Counter(times)
    on_gpu = backend.device.startswith("cuda")
    # Threads overlap on a CPU, so the sum of op times there says nothing about waiting.
    info["busy"] = busy_us / 1e3 / calls / info["ms_per_call"] if on_gpu and busy_us else None
    if not busy_us:
        info["note"] = (
            "the trace holds no kernel events (no CUPTI for this framework?)"
            if on_gpu
            else "no per-kernel times: XLA traces its CPU thunks only where XLA_FLAGS has "
            f"{xla.CPU_THUNK_TRACES} when JAX starts"
        )
    info["top"] = [
        {"name": name, "ms_per_call": us / 1e3 / calls, "share": us / busy_us if busy_us else None}
        for name, us in kernels.most_common(rows)
    ]
    return info


def _metered(call, calls: int, device: str) -> dict[str, Any]:
    """At least ``calls`` calls and METER_S seconds: NVML's energy counter and utilisation
    sample over tens of ms or more, so a few fast calls would read as zero."""
    with EnergyMeter(device) as energy:
        start, done = time.perf_counter(), 0
        while done < calls or time.perf_counter() - start < METER_S:
            call()
            done += 1
        seconds, calls = time.perf_counter() - start, done
    joules = energy["joules"]
    handle = NVML.handle(device)
    util = NVML.call("nvmlDeviceGetUtilizationRates", handle) if handle else None
    return {
        "ms_per_call": seconds / calls * 1e3,
        "joules_per_call": joules / calls if joules is not None else None,
        "mean_power_w": joules / seconds if joules is not None else None,
        "gpu_util_pct": getattr(util, "gpu", None),
    }


def _xla_costs(compiled) -> dict[str, Any]:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return {"xla_flops": cost.get("flops"), "xla_bytes": cost.get("bytes accessed")}
    except Exception:  # not every platform reports it
        return {}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Profiles", ""]
    for r in results:
        lines += [f"## {r['id']}", ""]
        if "error" in r:
            lines += [f"failed: {r['error']}", ""]
            continue
        facts = [f"{r['ms_per_call']:.3f} ms/call"]
        if r["busy"] is not None:
            facts.append(f"busy {r['busy']:.2f}")
        if r.get("joules_per_call") is not None:
            facts.append(f"{r['joules_per_call'] * 1e3:.2f} mJ/call, {r['mean_power_w']:.0f} W")
        if r.get("gpu_util_pct") is not None:
            facts.append(f"NVML util {r['gpu_util_pct']}%")
        if r.get("xla_flops"):
            facts.append(
                f"XLA {r['xla_flops'] / 1e9:.2f} GFLOP, {r['xla_bytes'] / 1e9:.3f} GB/call "
                f"({r['xla_flops'] / r['xla_bytes']:.1f} FLOP/B)"
            )
        if r.get("compile_s") is not None:
            facts.append(f"one-off {r['compile_s']:.1f} s")
        if r.get("note"):
            facts.append(r["note"])
        lines += ["; ".join(facts), "", "| kernel / op | ms per call | share |", "|---|---:|---:|"]
        for k in r["top"]:
            name = k["name"].replace("|", "/")[:90]
            share = f"{k['share']:.0%}" if k["share"] is not None else ""
            lines.append(f"| `{name}` | {k['ms_per_call']:.4f} | {share} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
