"""The exact train step against a fair Hutchinson-1 step, both backends, in one run.

    python -m bench.perf_check                      # d = 32,128,512,1024, batch 512, float32
    python -m bench.perf_check --dims 32,128 --threads 2 --rounds 15

For each d, the harness's own fair train steps (``bench.workloads.operators.step``: f and the
operator from one pass, a loss on both, one backward) of the hollow family on the HollowNet and
of Hutchinson with one probe on the FLOP-matched MLP, as torch eager, torch ``torch.compile``
and JAX jit. The steps of one d run interleaved (ABC ABC ...), each round timing every step
once; a step's time is the median over rounds. Prints ms per step, exact / Hutchinson ratios
(the FLOP bound of design.md section 6 beside them) and torch's eager / compiled ratio for
``hollow_forward``, headed by the CPU model and the load average before and after. Timings
mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from bench.workloads import operators
from bench.workloads.operators import Point
from impls import load_backend

# design.md section 6: the exact / Hutchinson-1 FLOP ratio of the fair steps
FLOP_BOUND = {32: 0.84, 128: 0.77, 512: 0.65, 1024: 0.60, 4096: 0.53}
TORCH_VARIANTS = ("eager", "compile")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf_check", description=__doc__)
    p.add_argument("--dims", default="32,128,512,1024")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--backends", default="torch,jax")
    p.add_argument(
        "--methods", default="hollow_forward", help="hollow family, e.g. hollow,hollow_forward"
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--rounds", type=int, default=11, help="interleaved rounds per d (at most)")
    p.add_argument("--budget-s", type=float, default=60.0, help="timed seconds per d (about)")
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="both taylor modules' CHUNK_ROWS (rows per recomputed chunk on a CPU); default: "
        "theirs (None, one chunk)",
    )
    args = p.parse_args(argv)
    if args.chunk_rows is not None:
        from impls.jax_backend import taylor as jax_taylor
        from impls.torch_backend import taylor as torch_taylor

        torch_taylor.CHUNK_ROWS = jax_taylor.CHUNK_ROWS = args.chunk_rows
    backends = {name: load_backend(name, "cpu") for name in args.backends.split(",")}
    if args.threads and "torch" in backends:
        import torch

        torch.set_num_threads(args.threads)
    print(f"# perf_check: {cpu_model()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"# {versions(backends)}; chunk rows {args.chunk_rows}; load before: {load()}")
    rows = []
    for d in (int(v) for v in args.dims.split(",")):
        steps = {}
        for bname, backend in backends.items():
            variants = TORCH_VARIANTS if bname == "torch" else ("jit",)
            for variant in variants:
                for method in (*args.methods.split(","), "hutchinson"):
                    point = _point(bname, method, d, args.batch, variant)
                    try:
                        steps[(bname, variant, method)] = build(backend, point)
                    except RuntimeError as exc:  # torch cannot compile Hutchinson's step
                        print(f"# {point.id}: {str(exc)[:120]}", file=sys.stderr)
        times = interleave(steps, args.rounds, args.budget_s)
        for (bname, variant, method), ms in times.items():
            rows.append((d, bname, variant, method, ms, steps[(bname, variant, method)][1]))
        print(f"# d={d} done, load {load()}", file=sys.stderr, flush=True)
    print(table(rows, args.methods.split(",")))
    print("# *: torch.compile refuses Hutchinson's double backward; the eager step instead")
    print(f"# load after: {load()}")
    return 0


def _point(backend: str, method: str, d: int, batch: int, variant: str) -> Point:
    model = "mlp_flop_matched" if method == "hutchinson" else "hollownet"
    probes = 1 if method == "hutchinson" else None
    return Point("divergence", backend, "cpu", method, model, d, batch, 1, "train", probes, variant)


def build(backend, point: Point):
    """(a no-argument call of the point's fair train step, its one-off compile seconds)."""
    spec = operators.model_spec(point.model, point.d)
    net = backend.build(spec, seed=operators.MODEL_SEED)
    x = backend.asarray(operators.data(point.batch, point.d, spec.dtype))
    fn, fn_args, _ = operators.step(backend, net, x, point)
    fn, compile_s, _ = backend.compile_step(fn, fn_args, point.variant)

    def run():
        out = fn(*fn_args)
        if backend.name == "jax":
            import jax

            jax.block_until_ready(out)
        backend.sync(out)

    run()  # warm-up
    run()
    return run, compile_s


def interleave(steps: dict, rounds: int, budget_s: float) -> dict:
    """Median ms per step over rounds in which every step runs once, in turn."""
    samples: dict = {key: [] for key in steps}
    start = time.perf_counter()
    for r in range(rounds):
        for key, (run, _) in steps.items():
            t0 = time.perf_counter()
            run()
            samples[key].append((time.perf_counter() - t0) * 1e3)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {key: statistics.median(v) for key, v in samples.items()}


def table(rows: list, methods: list[str]) -> str:
    ms = {(d, b, v, m): t for d, b, v, m, t, _ in rows}
    comp = {(d, b, v, m): c for d, b, v, m, _, c in rows}
    out = [
        "| d | backend | variant | method | step ms | Hutchinson-1 ms | ratio | FLOP bound "
        "| eager/compiled | compile s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, b, v, m in ms:
        if m == "hutchinson":
            continue
        # torch.compile refuses Hutchinson's double backward: the eager one, marked *
        hutch_v = v if (d, b, v, "hutchinson") in ms else "eager"
        hutch = ms[(d, b, hutch_v, "hutchinson")]
        ratio = ms[(d, b, v, m)] / hutch
        eager = ""
        if b == "torch" and v == "compile" and (d, b, "eager", m) in ms:
            eager = f"{ms[(d, b, 'eager', m)] / ms[(d, b, v, m)]:.2f}"
        c = comp[(d, b, v, m)]
        cs = f"{c:.1f}" if c is not None else ""
        mark = "" if hutch_v == v else "*"
        out.append(
            f"| {d} | {b} | {v} | {m} | {ms[(d, b, v, m)]:.2f} | {hutch:.2f}{mark} | {ratio:.2f} "
            f"| {FLOP_BOUND.get(d, '')} | {eager} | {cs} |"
        )
    return "\n".join(out)


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def versions(backends) -> str:
    out = []
    for name in backends:
        mod = __import__(name)
        out.append(f"{name} {mod.__version__}")
        if name == "torch":
            out.append(f"torch threads {mod.get_num_threads()}")
    return ", ".join(out)


if __name__ == "__main__":
    sys.exit(main())
