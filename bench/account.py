"""The step's account: where perf_check's fair train steps spend their time, by kind of work.

    python -m bench.account --dims 32,128 --backends torch,jax --batch 512
    python -m bench.account --dims 32 --backends torch --no-regions   # the plain eager step

The steps are exactly perf_check's (``perf_check.step_point`` and ``perf_check.prepare``):
``hollow_forward`` on the HollowNet and Hutchinson-1 on the FLOP-matched MLP, torch eager and
torch.compile, JAX jit. Each step's time splits into GEMMs, elementwise work (fused Inductor /
XLA loops and plain aten elementwise ops), copies/layout, reductions and other, with the ops per
step, the GEMMs' FLOPs, the bytes moved per row and the rate achieved. A row is one (sample,
dimension) pair, batch * d of them per step, for both models: the HollowNet's transformer runs
once per row; the MLP's figures are divided by the same count so the two compare per problem.

torch: ``torch.profiler`` (record_shapes) over ``--calls`` steps after a warm-up; an op's self
time goes to its name's category; FLOPs and bytes come from the recorded input shapes (float32
items assumed: the shapes carry no dtype). Inductor's compiled graphs show as ``## Call
CompiledFxGraph`` entries whose self time is their fused kernels: elementwise, bytes n/a.

JAX: the account reads the compiled HLO's entry computation (FLOPs of every dot, bytes of every
instruction's operands and result) and gives each instruction two times: its thunk's, traced by
XLA's CPU runtime under ``bench.harness.xla.CPU_THUNK_TRACES`` (set here before JAX starts; thunks
may overlap on XLA's threads), and an *estimate* from micro-benchmarks run here: each dot shape
as a jitted dot_general, everything else at the bandwidth of a jitted ``a * b + 1`` the size of
the instruction's largest operand or result. The estimates are never measurements: their sum is
shown beside the measured step time.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

from bench import perf_check
from bench.harness import xla
from bench.harness.telemetry import cpu_name
from impls import load_backend

CATEGORIES = ("GEMM", "elementwise", "copies/layout", "reductions", "other")
ITEM = 4  # bytes per float32 item: torch's recorded shapes carry no dtype
WARMUP = 3


@dataclass
class Tally:
    """One category's totals over the profiled calls (bytes None: some time had no sizes)."""

    seconds: float = 0.0
    ops: int = 0
    flops: float = 0.0
    bytes: float | None = 0.0
    traced: float = 0.0  # JAX: seconds per step of XLA's traced thunks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.account", description=__doc__)
    p.add_argument("--dims", default="32,128")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--backends", default="torch,jax")
    p.add_argument(
        "--methods",
        default="hollow_forward",
        help="ours, or peers (bench.peers, e.g. hollow_forward,peer_jvp); Hutchinson-1 is added",
    )
    p.add_argument("--variants", default="eager,compile,jit", help="those a backend has")
    p.add_argument("--calls", type=int, default=10, help="steps timed, and profiled or traced")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--no-regions",
        action="store_true",
        help="torch eager without the k = 1 node's compiled regions (COMPILE_MIN_ROWS = None)",
    )
    args = p.parse_args(argv)
    if "jax" in args.backends.split(","):
        # perf_check's (the sweep's) XLA, and per-thunk times: read when JAX makes its client.
        xla.add_flag(xla.CPU_SCHEDULER_OFF)
        xla.add_flag(xla.CPU_THUNK_TRACES)
    backends = {name: load_backend(name, "cpu") for name in args.backends.split(",")}
    regions = _configure_torch(backends, args)
    print(header(backends, regions))
    for bname, backend in backends.items():
        own = perf_check.TORCH_VARIANTS if bname == "torch" else ("jit",)
        for variant in (v for v in own if v in args.variants.split(",")):
            for method in (*args.methods.split(","), "hutchinson"):
                for d in (int(v) for v in args.dims.split(",")):
                    point = perf_check.step_point(bname, method, d, args.batch, variant)
                    print(section(backend, point, args.calls), flush=True)
    print(f"\n# load after: {perf_check.load()}")
    return 0


def _configure_torch(backends: dict, args) -> str:
    """Apply --threads and --no-regions; the regions' setting as text."""
    if "torch" not in backends:
        return "n/a"
    import torch

    from impls.torch_backend import taylor

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_regions:
        taylor.COMPILE_MIN_ROWS = None
    return f"COMPILE_MIN_ROWS = {taylor.COMPILE_MIN_ROWS}"


def header(backends: dict, regions: str) -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    keep = ("Model name", "CPU(s):", "Thread(s) per core", "L1d", "L2", "L3")
    cpu = [line for line in lscpu.splitlines() if line.startswith(keep)]
    flags = next((line.split() for line in lscpu.splitlines() if line.startswith("Flags")), [])
    # The vector units the GEMMs and elementwise kernels can use; the rest is noise here.
    cpu.append("SIMD: " + " ".join(f for f in flags if f.startswith(("avx", "fma", "amx"))))
    return "\n".join(
        [
            f"# bench.account: {cpu_name()}, python {platform.python_version()}",
            f"# {perf_check.versions(backends)}; torch eager k = 1 regions: {regions}",
            f"# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load before: {perf_check.load()}",
            *(f"#   {line}" for line in cpu),
        ]
    )


def section(backend, point, calls: int) -> str:
    """The markdown account of one step, or why there is none."""
    rows = point.batch * point.d
    title = (
        f"\n## {point.backend} {point.variant} {point.method} d={point.d} ({point.model}, batch "
        f"{point.batch}; {rows} rows)"
    )
    try:
        perf_check.crash_check(point)  # a compiled peer (--methods ...,peer_jvp) would crash
        fn, fn_args, _ = perf_check.prepare(backend, point)
    except RuntimeError as exc:  # torch.compile refuses Hutchinson's double backward
        return f"{title}\n\nnot built: {str(exc)[:200]}"
    measured = measure(backend, fn, fn_args, calls)
    if point.backend == "torch":
        return f"{title}\n\n{torch_account(fn, fn_args, calls, measured, rows)}"
    return f"{title}\n\n{jax_account(backend, fn, fn_args, calls, measured, rows)}"


def measure(backend, fn, fn_args, calls: int) -> float:
    """Median seconds of ``calls`` unprofiled steps, after WARMUP."""

    def run():
        backend.sync(fn(*fn_args))

    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- torch: the profiler's ops by name ---------------------------------------------------------

GEMMS = {"mm": (0, 1), "addmm": (1, 2), "bmm": (0, 1), "baddbmm": (1, 2), "mv": (0, 1),
         "addmv": (1, 2), "dot": (0, 1)}  # fmt: skip  # name -> positions of (A, B)
GEMM_WRAPPERS = {"matmul", "linear", "einsum"}  # their work is a GEMM child's
COPIES = {"copy_", "_to_copy", "to", "cat", "clone", "contiguous", "repeat", "stack",
          "index", "index_put_", "index_select", "gather", "scatter", "scatter_add_"}  # fmt: skip
REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "norm", "prod", "all", "any",
              "logsumexp", "var", "std"}  # fmt: skip
# Views, allocation and bookkeeping: dispatch time, no data moved.
NO_DATA = {"empty", "empty_like", "empty_strided", "view", "_unsafe_view", "reshape", "expand",
           "expand_as", "transpose", "t", "permute", "numpy_T", "as_strided", "select", "slice",
           "squeeze", "unsqueeze", "detach", "alias", "diagonal", "resize_", "flatten",
           "resolve_conj", "resolve_neg", "lift_fresh", "_reshape_alias", "split", "unbind",
           "item", "_local_scalar_dense", "is_nonzero", "result_type", "zeros_like",
           "ones_like", "new_empty", "unfold"}  # fmt: skip
# Ops whose data moves in a child op already counted (copy_, a GEMM): no bytes of their own.
COMPOSITE = {"to", "_to_copy", "clone", "contiguous", "repeat", "reshape", *GEMM_WRAPPERS}
COMPILED = "## Call CompiledFxGraph"


def torch_category(name: str) -> str:
    """The category of a profiler event's self time."""
    if name.startswith(COMPILED):
        return "elementwise"
    if not name.startswith("aten::"):
        return "other"  # autograd engine, Python autograd Functions, Dynamo guards
    op = name[len("aten::") :]
    if op in GEMMS or op in GEMM_WRAPPERS:
        return "GEMM"
    if op in COPIES:
        return "copies/layout"
    if op in REDUCTIONS:
        return "reductions"
    return "other" if op in NO_DATA else "elementwise"


def numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def gemm_cost(op: str, shapes: list) -> tuple[float, float]:
    """(FLOPs, bytes) of a GEMM from its recorded input shapes: 2 * batch * m * k * n; bytes
    read A, B (and the bias) and write the (batch, m, n) result, each once."""
    ia, ib = GEMMS[op]
    a, b = shapes[ia], shapes[ib]
    k = a[-1]
    out = [*a[:-1], b[-1]] if len(b) > 1 else list(a[:-1])
    flops = 2.0 * numel(out) * k
    bias = numel(shapes[0]) if ia == 1 else 0
    return flops, float((numel(a) + numel(b) + bias + numel(out)) * ITEM)


def op_bytes(op: str, shapes: list) -> float:
    """Bytes an op reads and writes: its tensor inputs read, and its result written: the size
    of the largest (broadcast) input, or in place (``_`` suffix) the first input's; none for a
    reduction (small); copy_'s inputs are already its destination written and source read."""
    if op in NO_DATA or op in COMPOSITE:
        return 0.0
    sizes = [numel(s) for s in shapes if s]
    if not sizes or op == "copy_" or op in REDUCTIONS:
        written = 0
    else:
        written = numel(shapes[0]) if op.endswith("_") else max(sizes)
    return float((sum(sizes) + written) * ITEM)


def torch_tallies(events) -> tuple[dict[str, Tally], int]:
    """Category -> Tally over the profiler's events, and the compiled graphs called."""
    tallies = {c: Tally() for c in CATEGORIES}
    graphs = 0
    for e in events:
        cat, t = torch_category(e.name), tallies[torch_category(e.name)]
        t.seconds += e.self_cpu_time_total / 1e6
        t.ops += 1
        op = e.name[len("aten::") :]
        if e.name.startswith(COMPILED):
            graphs += 1
            t.bytes = None
        elif cat == "GEMM" and op in GEMMS:
            flops, nbytes = gemm_cost(op, e.input_shapes)
            t.flops += flops
            t.bytes = None if t.bytes is None else t.bytes + nbytes
        elif e.name.startswith("aten::") and t.bytes is not None:
            t.bytes += op_bytes(op, e.input_shapes)
    return tallies, graphs


def torch_account(fn, fn_args, calls: int, measured: float, rows: int) -> str:
    """Profile ``calls`` steps; the categories' table per step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    # One profiled step first, not recorded: the profiler's own first-step costs stay out.
    plan = schedule(wait=0, warmup=1, active=calls, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, schedule=plan) as prof:
        fn(*fn_args)
        prof.step()
        t0 = time.perf_counter()
        for i in range(calls):
            fn(*fn_args)
            if i == calls - 1:  # before the last step(), which collects the whole trace
                profiled = (time.perf_counter() - t0) / calls
            prof.step()
    tallies, graphs = torch_tallies(prof.events())
    ops_s = sum(t.seconds for t in tallies.values()) / calls
    n_ops = sum(t.ops for t in tallies.values()) / calls
    cost = profiler_cost()
    lines = [
        f"measured step {measured * 1e3:.3f} ms (median of {calls}); profiled {profiled * 1e3:.3f}"
        f" ms/step, of which ops' self time {ops_s * 1e3:.3f} ms and unattributed (Python, "
        f"between ops; ops' self times can overrun the clock by a little) "
        f"{max(profiled - ops_s, 0.0) * 1e3:.3f} ms; the profiler's own cost, "
        f"{cost * 1e6:.1f} us per recorded op here, is about {n_ops * cost * 1e3:.3f} ms of "
        f"the profiled step ({n_ops:.0f} ops); {graphs / calls:.0f} compiled graph calls per "
        f"step; {torch.get_num_threads()} threads",
        "",
        *table(tallies, calls, profiled, rows, "ms per step", "share of profiled step"),
    ]
    return "\n".join(lines)


def profiler_cost(n: int = 2000) -> float:
    """Seconds the profiler (record_shapes) adds per recorded op: n one-element adds timed with
    and without it, over the ops it recorded."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    a = torch.ones(1)

    def adds() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            torch.add(a, a)
        return time.perf_counter() - t0

    plain = adds()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        profiled = adds()
    return max(profiled - plain, 0.0) / max(len(prof.events()), 1)


def table(tallies: dict, calls: int, step_s: float, rows: int, ms_head: str, share: str):
    """The markdown rows: category, ms, share, ops, GFLOP, bytes per row, rate."""
    out = [
        f"| category | {ms_head} | {share} | ops per step | GFLOP per step | bytes per row "
        "| GFLOP/s (GEMM) or GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cat, t in tallies.items():
        s = t.seconds / calls
        nbytes = None if t.bytes is None else t.bytes / calls
        per_row = "n/a" if nbytes is None else f"{nbytes / rows:.0f}"
        if cat == "GEMM":
            rate = f"{t.flops / calls / s / 1e9:.1f}" if s > 0 and t.flops else ""
        else:
            rate = f"{nbytes / s / 1e9:.1f}" if s > 0 and nbytes else "n/a" if s > 0 else ""
        gflop = f"{t.flops / calls / 1e9:.4f}" if cat == "GEMM" else ""
        out.append(
            f"| {cat} | {s * 1e3:.3f} | {s / step_s:.0%} | {t.ops / calls:.0f} | {gflop} "
            f"| {per_row} | {rate} |"
        )
    return out


# --- JAX: the compiled HLO, priced by micro-benchmarks ----------------------------------------

NUMPY = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64"}
ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
            "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}  # fmt: skip
_SHAPE = re.compile(r"\b(pred|bf16|[suf]\d+)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%([\w.\-]+)\s+=\s+(.+?)\s+([a-z][\w\-]*)\((.*)$")
_HEAD = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s+\(")
FREE = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "after-all"}
LAYOUT = {"copy", "transpose", "concatenate", "slice", "pad", "dynamic-slice",
          "dynamic-update-slice", "reshape"}  # fmt: skip
OTHER = {"scatter", "sort", "custom-call", "while", "conditional", "rng", "rng-bit-generator"}


class Instr(NamedTuple):
    """One HLO instruction: its result type's text, opcode, operand names and attributes."""

    name: str
    type: str
    opcode: str
    operands: tuple[str, ...]
    attrs: str


def shapes(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in a type's text (a tuple's elements in order)."""
    return [
        (dt, tuple(int(v) for v in dims.split(",") if v)) for dt, dims in _SHAPE.findall(type_text)
    ]


def nbytes(type_text: str) -> int:
    return sum(numel(dims) * ITEMSIZE[dt] for dt, dims in shapes(type_text))


def parse_hlo(text: str) -> tuple[dict[str, list[Instr]], str]:
    """({computation name: its instructions}, the entry computation's name) of HLO text."""
    comps: dict[str, list[Instr]] = {}
    entry, current = "", None
    for line in text.splitlines():
        head = _HEAD.match(line)
        if head:
            current = comps.setdefault(head.group(1), [])
            entry = head.group(1) if line.startswith("ENTRY") else entry
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            inside, attrs = _split_call(m.group(4))
            operands = tuple(re.findall(r"%([\w.\-]+)", inside))
            current.append(Instr(m.group(1), m.group(2), m.group(3), operands, attrs))
    return comps, entry


def _split_call(rest: str) -> tuple[str, str]:
    """(the operand list, the attributes after it) of ``rest``, the text after ``opcode(``."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i], rest[i + 1 :]
    return rest, ""


def called(ins: Instr, comps: dict) -> list[Instr]:
    """The instructions of the computations ``ins`` calls (a fusion's), nested ones too."""
    out = []
    for name in re.findall(r"(?:calls|to_apply|body)=%([\w.\-]+)", ins.attrs):
        for inner in comps.get(name, []):
            out += [inner, *called(inner, comps)]
    return out


class Dot(NamedTuple):
    """A dot's shapes and dimension numbers, as lax.dot_general takes them, and its result's."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    contract: tuple[tuple[int, ...], tuple[int, ...]]
    batch: tuple[tuple[int, ...], tuple[int, ...]]
    out: tuple[int, ...]
    dtype: str

    @property
    def flops(self) -> float:
        """2 * (result elements) * (contracted length)."""
        return 2.0 * numel(self.out) * numel(self.lhs[c] for c in self.contract[0])

    def __str__(self) -> str:
        (lc, rc), (lb, rb) = self.contract, self.batch
        batch = f", batch {list(lb)}/{list(rb)}" if lb else ""
        # Both operands contracted on their leading (row) axis: a weight gradient, X^T G.
        kind = " (over rows: weight gradient)" if (lc, rc) == ((0,), (0,)) and not lb else ""
        return f"{list(self.lhs)} x {list(self.rhs)}, contract {list(lc)}/{list(rc)}{batch}{kind}"


def _dims(attrs: str, key: str) -> tuple[int, ...]:
    m = re.search(key + r"=\{([\d,]*)\}", attrs)
    return tuple(int(v) for v in m.group(1).split(",") if v) if m else ()


def dots(ins: Instr, comps: dict, types: dict[str, str]) -> list[Dot]:
    """The dots ``ins`` is or calls (``types``: every instruction's result type, by name: HLO
    names are unique in a module)."""
    found = []
    for i in [ins, *called(ins, comps)]:
        if i.opcode != "dot":
            continue
        (dt, lhs), (_, rhs) = shapes(types[i.operands[0]])[0], shapes(types[i.operands[1]])[0]
        contract = (_dims(i.attrs, "lhs_contracting_dims"), _dims(i.attrs, "rhs_contracting_dims"))
        batch = (_dims(i.attrs, "lhs_batch_dims"), _dims(i.attrs, "rhs_batch_dims"))
        found.append(Dot(lhs, rhs, contract, batch, shapes(i.type)[0][1], dt))
    return found


def hlo_category(ins: Instr, comps: dict) -> str | None:
    """The category of an entry instruction, or None for one that moves no data (parameters,
    bitcasts, tuples)."""
    if ins.opcode in FREE:
        return None
    ops = {i.opcode for i in [ins, *called(ins, comps)]} - FREE - {"fusion"}
    if ops & {"dot", "convolution"}:
        return "GEMM"
    if ops and ops <= LAYOUT:
        return "copies/layout"
    if ops & OTHER:
        return "other"
    return "reductions" if ops & {"reduce", "reduce-window"} else "elementwise"


def instr_bytes(ins: Instr, types: dict[str, str]) -> int:
    """Its operands' bytes read and its result's written, each once."""
    return sum(nbytes(types[o]) for o in ins.operands if o in types) + nbytes(ins.type)


class Bench:
    """Micro-benchmarks run here, memoised: a dot shape's seconds; the bandwidth of a jitted
    ``a * b + 1`` (2 reads, 1 write) of n elements, n rounded up to a power of 2. Each is the
    median over REPS of BURST calls; the time of a jitted scalar add (a call's own overhead) is
    taken off both. Operands are in XLA's default layout, so a dot's figure is that of its
    contraction, not of the layout the step's HLO may give its operands."""

    REPS, BURST = 9, 5

    def __init__(self):
        import jax.numpy as jnp

        self.memo: dict = {}
        self.overhead = self._time(lambda a: a + 1, [jnp.ones(1, "float32")])

    def _time(self, fn, args) -> float:
        import jax

        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(*args))
        times = []
        for _ in range(self.REPS):  # BURST calls back to back: dispatch overlaps the work
            t0 = time.perf_counter()
            jax.block_until_ready([jitted(*args) for _ in range(self.BURST)])
            times.append((time.perf_counter() - t0) / self.BURST)
        return statistics.median(times)

    def dot(self, d: Dot) -> float:
        """Seconds of one such dot_general, less the call overhead."""
        if d not in self.memo:
            import jax
            import jax.numpy as jnp

            a, b = jnp.ones(d.lhs, NUMPY[d.dtype]), jnp.ones(d.rhs, NUMPY[d.dtype])
            dims = (d.contract, d.batch)
            secs = self._time(lambda a, b: jax.lax.dot_general(a, b, dims), [a, b])
            self.memo[d] = max(secs - self.overhead, 1e-9)
        return self.memo[d]

    def bandwidth(self, n: int) -> float:
        """Bytes per second of an elementwise pass over about n float32 elements."""
        size = 1 << max(n - 1, 0).bit_length()
        if size not in self.memo:
            import jax.numpy as jnp

            a, b = jnp.ones(size, "float32"), jnp.ones(size, "float32")
            secs = max(self._time(lambda a, b: a * b + 1, [a, b]) - self.overhead, 1e-9)
            self.memo[size] = 3 * size * 4 / secs
        return self.memo[size]


def jax_tallies(comps: dict, entry: str, bench: Bench, thunks: dict[str, float]):
    """(category -> Tally, dot shape -> [count, traced s, est. s] per step) over the entry
    computation's instructions. A Tally's ``seconds`` are estimates, its ``traced`` the
    instructions' thunk times (``thunks``: seconds per step by instruction name)."""
    types = {i.name: i.type for body in comps.values() for i in body}
    tallies = {c: Tally() for c in CATEGORIES}
    per_dot: dict[Dot, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for ins in comps[entry]:
        cat = hlo_category(ins, comps)
        if cat is None:
            continue
        t, moved, traced = tallies[cat], instr_bytes(ins, types), thunks.get(ins.name, 0.0)
        t.ops += 1
        t.bytes += moved
        t.traced += traced
        if cat == "GEMM":
            found = dots(ins, comps, types)
            t.flops += sum(d.flops for d in found)
            t.seconds += sum(bench.dot(d) for d in found)
            for d in found:  # a fusion's traced time shared among its dots by FLOPs
                share = d.flops / max(sum(e.flops for e in found), 1.0)
                per_dot[d][0] += 1
                per_dot[d][1] += traced * share
                per_dot[d][2] += bench.dot(d)
        else:  # priced at the bandwidth of a pass over its largest array (a reduce's input)
            arrays = [ins.type, *(types[o] for o in ins.operands if o in types)]
            largest = max((numel(dims) for a in arrays for _, dims in shapes(a)), default=1)
            t.seconds += moved / bench.bandwidth(max(largest, 1))
    return tallies, per_dot


def thunk_seconds(backend, fn, fn_args, calls: int) -> dict[str, float]:
    """Seconds per step by HLO instruction, from XLA's thunk traces (empty where XLA traces
    none: CPU_THUNK_TRACES not in XLA_FLAGS when JAX started)."""
    us, _ = backend.kernel_times(lambda: backend.sync(fn(*fn_args)), calls)
    return {name: v / 1e6 / calls for name, v in us.items()}


def _rate(amount: float, secs: float, traced: bool) -> str:
    return f"{amount / secs / 1e9:.1f}" if secs > 0 and amount else "n/a" if traced else ""


def jax_table(tallies: dict[str, Tally], rows: int, traced_sum: float) -> list[str]:
    """Per category: traced ms and share, est. ms, ops, GFLOP, bytes per row, and the rate
    (GFLOP/s for GEMMs, GB/s for the rest) traced and estimated."""
    out = [
        "| category | traced ms | share of traced | est. ms | ops per step | GFLOP per step "
        "| bytes per row | GFLOP/s or GB/s, traced | same, micro-bench |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cat, t in tallies.items():
        amount = t.flops if cat == "GEMM" else t.bytes
        share = f"{t.traced / traced_sum:.0%}" if traced_sum else "n/a"
        gflop = f"{t.flops / 1e9:.4f}" if cat == "GEMM" else ""
        out.append(
            f"| {cat} | {t.traced * 1e3:.3f} | {share} | {t.seconds * 1e3:.3f} | {t.ops} "
            f"| {gflop} | {t.bytes / rows:.0f} | {_rate(amount, t.traced, bool(traced_sum))} "
            f"| {_rate(amount, t.seconds, True)} |"
        )
    return out


def dot_table(per_dot: dict) -> list[str]:
    """Per dot shape: count, MFLOP, GFLOP/s traced and micro-benchmarked, ms per step."""
    out = [
        "| dot shape (lhs x rhs, contracted dims lhs/rhs) | per step | MFLOP each "
        "| traced GFLOP/s | micro-bench GFLOP/s | traced ms per step | est. ms per step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, (n, traced, est) in sorted(per_dot.items(), key=lambda kv: -kv[0].flops * kv[1][0]):
        flops = d.flops * n
        out.append(
            f"| {d} | {n} | {d.flops / 1e6:.2f} | {_rate(flops, traced, True)} "
            f"| {_rate(flops, est, True)} | {traced * 1e3:.3f} | {est * 1e3:.3f} |"
        )
    return out


def jax_account(backend, fn, fn_args, calls: int, measured: float, rows: int) -> str:
    """The compiled step's HLO with each instruction's traced thunk time and its estimate: the
    categories' table and the dot shapes'."""
    # perf_check.prepare's step is jax.jit(step).lower(*args).compile() itself: the HLO timed
    comps, entry = parse_hlo(fn.as_text())
    thunks = thunk_seconds(backend, fn, fn_args, calls)
    tallies, per_dot = jax_tallies(comps, entry, Bench(), thunks)
    est = sum(t.seconds for t in tallies.values())
    traced = sum(t.traced for t in tallies.values())
    cost = fn.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    lines = [
        f"measured step {measured * 1e3:.3f} ms; XLA thunks traced {traced * 1e3:.3f} ms per "
        f"step over {calls} steps ({len(thunks)} thunks; they may overlap on XLA's threads)"
        f"{'' if thunks else ': none traced (XLA_FLAGS lacks ' + xla.CPU_THUNK_TRACES + ')'}; "
        f"sum of estimates {est * 1e3:.3f} ms ({est / measured:.2f}x the measured); XLA "
        f"cost_analysis {cost.get('flops', 0) / 1e9:.4f} GFLOP, "
        f"{cost.get('bytes accessed', 0) / rows:.0f} bytes per row",
        "",
        *jax_table(tallies, rows, traced),
        "",
        *dot_table(per_dot),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
