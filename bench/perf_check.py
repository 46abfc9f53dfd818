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

With ``--peers`` (the default) each backend's peers (:mod:`bench.peers`: the same method
written with the framework's own forward-mode AD) run the same fair step on the same HollowNet,
interleaved with the others; the table gives the fastest peer of the same variant ("peer ms")
and ours / peer.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from bench import peers
from bench.harness import xla
from bench.harness.telemetry import cpu_name
from bench.workloads import operators
from bench.workloads.operators import Point
from impls import load_backend

# design.md section 6: the exact / Hutchinson-1 FLOP ratio of the fair steps
FLOP_BOUND = {32: 0.84, 128: 0.77, 512: 0.65, 1024: 0.60, 4096: 0.53}
TORCH_VARIANTS = ("eager", "compile")
# torch eager with the k = 1 node op by op (taylor.COMPILE_MIN_ROWS = None): what "eager" was
# before its compiled regions, timed in the same run (--plain-eager)
PLAIN = "eager-plain"


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
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time each backend's peers (bench.peers) too",
    )
    p.add_argument(
        "--plain-eager",
        action="store_true",
        help=f"also time torch's hollow steps eager without the k = 1 node's compiled regions "
        f"(variant {PLAIN})",
    )
    args = p.parse_args(argv)
    if args.chunk_rows is not None:
        from impls.jax_backend import taylor as jax_taylor
        from impls.torch_backend import taylor as torch_taylor

        torch_taylor.CHUNK_ROWS = jax_taylor.CHUNK_ROWS = args.chunk_rows
    if "jax" in args.backends.split(","):
        xla.add_flag(xla.CPU_SCHEDULER_OFF)  # the sweep's XLA, read when JAX starts
    backends = {name: load_backend(name, "cpu") for name in args.backends.split(",")}
    if args.threads and "torch" in backends:
        import torch

        torch.set_num_threads(args.threads)
    print(f"# perf_check: {cpu_name()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"# {versions(backends)}; chunk rows {args.chunk_rows}; load before: {load()}")
    print(f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    rows = []
    for d in (int(v) for v in args.dims.split(",")):
        steps = {}
        for bname, backend in backends.items():
            variants = TORCH_VARIANTS if bname == "torch" else ("jit",)
            for variant in variants:
                for method in methods(bname, args.methods, args.peers):
                    point = step_point(bname, method, d, args.batch, variant)
                    try:
                        crash_check(point)
                        steps[(bname, variant, method)] = build(backend, point)
                    # torch cannot compile Hutchinson's step (nor, maybe, a peer's)
                    except RuntimeError as exc:
                        print(f"# {point.id}: {str(exc)[:120]}", file=sys.stderr)
            if bname == "torch" and args.plain_eager:
                for method in args.methods.split(","):
                    run, _ = build_plain(backend, step_point(bname, method, d, args.batch, "eager"))
                    steps[(bname, PLAIN, method)] = run, None
        times = interleave(steps, args.rounds, args.budget_s)
        for (bname, variant, method), ms in times.items():
            rows.append((d, bname, variant, method, ms, steps[(bname, variant, method)][1]))
        print(f"# d={d} done, load {load()}", file=sys.stderr, flush=True)
    print(table(rows, args.methods.split(",")))
    print("# *: torch.compile refused that step (see stderr); the eager step instead")
    if args.plain_eager:
        print(f"# {PLAIN}: eager with the k = 1 node op by op; its eager/compiled: it / compile")
    print(f"# load after: {load()}")
    return 0


def methods(backend: str, ours: str, with_peers: bool) -> tuple[str, ...]:
    """The methods timed for ``backend``: ours (comma-separated), Hutchinson, and its peers."""
    return (*ours.split(","), "hutchinson", *(peers.PEERS[backend] if with_peers else ()))


def step_point(backend: str, method: str, d: int, batch: int, variant: str) -> Point:
    """The divergence train point perf_check and bench.account time: Hutchinson on the
    FLOP-matched MLP with one probe, ours and the peers on the HollowNet, batch ``batch``."""
    model = "mlp_flop_matched" if method == "hutchinson" else "hollownet"
    probes = 1 if method == "hutchinson" else None
    return Point("divergence", backend, "cpu", method, model, d, batch, 1, "train", probes, variant)


def build(backend, point: Point):
    """(a no-argument call of the point's fair train step, its one-off compile seconds)."""
    fn, fn_args, compile_s = prepare(backend, point)

    def run():
        backend.sync(fn(*fn_args))  # JAX: block_until_ready; torch on a GPU: synchronize

    run()  # warm-up
    run()
    return run, compile_s


def build_plain(backend, point: Point):
    """:func:`build` of a torch eager point whose k = 1 node runs op by op at every call."""
    from impls.torch_backend import taylor

    def plain(call):
        saved, taylor.COMPILE_MIN_ROWS = taylor.COMPILE_MIN_ROWS, None
        try:
            return call()
        finally:
            taylor.COMPILE_MIN_ROWS = saved

    run, compile_s = plain(lambda: build(backend, point))
    return (lambda: plain(run)), compile_s


def crash_check(point: Point) -> None:
    """RuntimeError where a compiled peer's step would crash this process (bench.peers.crash)."""
    if point.variant == "compile" and point.method.startswith("peer_"):
        why = peers.crash(point)
        if why:
            raise RuntimeError(f"torch.compile: {why}")


def prepare(backend, point: Point) -> tuple:
    """(the point's fair train step compiled as its variant, its arguments, compile seconds):
    operators.step's, or a peer's (bench.peers) for a ``peer_*`` method, on the same model."""
    spec = operators.model_spec(point.model, point.d)
    net = backend.build(spec, seed=operators.MODEL_SEED)
    x = backend.asarray(operators.data(point.batch, point.d, spec.dtype))
    make = peers.step if point.method.startswith("peer_") else operators.step
    fn, fn_args, _ = make(backend, net, x, point)
    fn, compile_s, _ = backend.compile_step(fn, fn_args, point.variant)
    return fn, fn_args, compile_s


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
    """One line per step but Hutchinson's: its ms, Hutchinson-1's and the ratio, and for ours
    the fastest peer's ms and ours / peer. A step torch.compile refused is the eager one, *."""
    ms = {(d, b, v, m): t for d, b, v, m, t, _ in rows}
    comp = {(d, b, v, m): c for d, b, v, m, _, c in rows}
    out = [
        "| d | backend | variant | method | step ms | Hutchinson-1 ms | ratio | FLOP bound "
        "| eager/compiled | peer ms | ours / peer | compile s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for d, b, v, m in ms:
        if m == "hutchinson":
            continue
        t = ms[(d, b, v, m)]
        hutch, hmark, _ = _fallback(ms, d, b, v, ("hutchinson",))
        eager = ""
        if b == "torch" and v == "compile" and (d, b, "eager", m) in ms:
            eager = f"{ms[(d, b, 'eager', m)] / t:.2f}"
        if b == "torch" and v == PLAIN and (d, b, "compile", m) in ms:
            eager = f"{t / ms[(d, b, 'compile', m)]:.2f}"
        peer = ratio = ""
        if not m.startswith("peer_") and any(k[3].startswith("peer_") for k in ms):
            best, pmark, name = _fallback(ms, d, b, v, peers.PEERS[b])
            peer, ratio = f"{best:.2f}{pmark} ({name})", f"{t / best:.2f}"
        c = comp[(d, b, v, m)]
        cs = f"{c:.1f}" if c is not None else ""
        out.append(
            f"| {d} | {b} | {v} | {m} | {t:.2f} | {hutch:.2f}{hmark} | {t / hutch:.2f} "
            f"| {FLOP_BOUND.get(d, '')} | {eager} | {peer} | {ratio} | {cs} |"
        )
    return "\n".join(out)


def _fallback(ms: dict, d: int, b: str, v: str, names) -> tuple[float, str, str]:
    """(ms, "", name) of the fastest of ``names``' steps of variant v, or where torch.compile
    refused them all, of the fastest eager one, marked "*"."""
    for variant, mark in ((v, ""), ("eager", "" if v == PLAIN else "*")):
        found = [(ms[(d, b, variant, n)], n) for n in names if (d, b, variant, n) in ms]
        if found:
            best, name = min(found)
            return best, mark, name
    return float("nan"), "?", ""


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
