"""One sweep process per GPU on this node, each on its own shard.

    python -m bench.launch --gpus 4 --out results/ -- bench --bench-preset paper

Process i sees only GPU i (``CUDA_VISIBLE_DEVICES``: the i-th entry of the launcher's, else i)
and runs shard ``(a - 1) * N + i + 1`` of ``A * N`` on node a of A (a Slurm array task, or
``--shard a/A``), so all shards are disjoint and cover the grid; on that GPU only
(``--bench-devices cuda:0``, unless given), so no shard repeats the CPU's points. With
``--per-backend`` each GPU runs one process per backend, one after the other: JAX's memory pool
never shrinks, so torch and JAX sharing a process would squeeze each other. Each process writes
``OUT/results-<shard>of<total>[-<backend>].json``, its journal and ``.log``; the exit status is
the first failure's. Processes, not xdist workers: pytest-benchmark switches itself off under
xdist.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness.options import OptionError, parse_shard, slurm_shard, usable_cores
from impls import BACKENDS

# The launcher sets these for each process; given after "--" they would fight it.
OWNED = ("--bench-shard", "--benchmark-json", "--bench-journal")
WORKERS_ENV = "HOLLOWBENCH_COMPILE_WORKERS"
LOG_TAIL = 20  # lines of a failed process's log to print


def visible_gpus(count: int | None) -> list[str]:
    """The GPU of each process: the first ``count`` entries of CUDA_VISIBLE_DEVICES, or
    0..count-1 without it; ``count`` None: every GPU listed there, else every one nvidia-smi
    sees. Raises ValueError when there are too few or none is found."""
    listed = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if count is None:
        count = len(listed) or _nvidia_smi_count()
        if not count:
            raise ValueError("no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi): give --gpus N")
    if listed and count > len(listed):
        raise ValueError(f"--gpus {count}, but CUDA_VISIBLE_DEVICES lists {len(listed)}")
    return listed[:count] if listed else [str(i) for i in range(count)]


def _nvidia_smi_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in run.stdout.splitlines())


def outer_shard(given: str | None) -> tuple[int, int]:
    """This node's shard: ``--shard I/N``, else its Slurm array task, else 1/1."""
    if given is not None:
        return parse_shard(given)
    found = slurm_shard(os.environ)
    return found[0] if found else (1, 1)


Run = tuple[list[str], dict[str, str], Path]  # argv, environment, log


def commands(
    pytest_args: list[str],
    gpus: list[str],
    outer: tuple[int, int],
    out: Path,
    backends: tuple[str, ...] = (),
) -> list[list[Run]]:
    """Per GPU, the processes it runs one after the other: GPU ``gpus[i]``, its shard of the
    node's shard ``outer``, one process per backend of ``backends`` (none: one for all), each
    with its own JSON under ``out`` and its share of the cores for compiling."""
    node, nodes = outer
    total = nodes * len(gpus)
    workers = str(max(1, usable_cores() // len(gpus)))
    given = any(a.split("=")[0] == "--bench-devices" for a in pytest_args)
    devices = [] if given else ["--bench-devices", "cuda:0"]  # the one GPU it sees
    chains = []
    for i, gpu in enumerate(gpus):
        index = (node - 1) * len(gpus) + i + 1
        env = os.environ | {"CUDA_VISIBLE_DEVICES": gpu}
        env.setdefault(WORKERS_ENV, workers)
        chain = []
        for backend in backends or (None,):
            stem = f"results-{index}of{total}" + (f"-{backend}" if backend else "")
            own = ["--bench-backends", backend] if backend else []
            shard = ["--bench-shard", f"{index}/{total}", "--benchmark-json", f"{out / stem}.json"]
            argv = [sys.executable, "-m", "pytest", *pytest_args, *devices, *own, *shard]
            chain.append((argv, env, out / f"{stem}.log"))
        chains.append(chain)
    return chains


def launch(chains: list[list[Run]]) -> int:
    """Run every GPU's chain at once, each chain's processes one after the other; returns the
    first failure's exit status (0: all passed). Ctrl-C or SIGTERM (Slurm's end of a job) stops
    every process."""
    procs: list[subprocess.Popen] = []
    stopping = False

    def run_chain(chain: list[Run]) -> list[int]:
        codes = []
        for argv, env, log in chain:
            if stopping:
                break
            with open(log, "w") as fh:
                proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
            procs.append(proc)
            codes.append(proc.wait())
        return codes

    def stop(*_) -> None:
        nonlocal stopping
        stopping = True
        _stop(procs)

    previous = signal.signal(signal.SIGTERM, stop)
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(len(chains)) as pool:
            codes = [c for found in pool.map(run_chain, chains) for c in found]
    except KeyboardInterrupt:
        stop()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    runs = [run for chain in chains for run in chain]
    for (argv, env, log), code in zip(runs, codes, strict=False):
        shard = argv[argv.index("--bench-shard") + 1]
        print(f"shard {shard} on GPU {env['CUDA_VISIBLE_DEVICES']}: exit {code} ({log})")
        if code:
            print("".join(log.read_text().splitlines(keepends=True)[-LOG_TAIL:]), end="")
    print(f"{len(codes)} processes in {time.monotonic() - start:.0f} s")
    return next((code for code in codes if code), 0)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.launch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--gpus", type=int, help="processes, one per GPU (default: every GPU)")
    parser.add_argument("--out", default=".", help="folder of the JSON files (default: .)")
    parser.add_argument("--shard", help="this node's shard I/N (default: its Slurm array task)")
    parser.add_argument(
        "--per-backend",
        action="store_true",
        help="one process per backend on each GPU, one after the other (torch, then jax)",
    )
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then pytest's arguments")
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    owned = [a for a in pytest_args if a.split("=")[0] in OWNED]
    if owned:
        parser.error(f"{', '.join(owned)}: the launcher sets these for each process")
    if args.gpus is not None and args.gpus < 1:
        parser.error(f"--gpus {args.gpus}: need at least 1")
    try:
        gpus, outer = visible_gpus(args.gpus), outer_shard(args.shard)
    except (ValueError, OptionError) as exc:
        parser.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backends = BACKENDS if args.per_backend else ()
    if args.per_backend and any(a.split("=")[0] == "--bench-backends" for a in pytest_args):
        parser.error("--per-backend sets --bench-backends for each process")
    code = launch(commands(pytest_args, gpus, outer, out, backends))
    print(f"report: python -m reports build '{out / 'results-*.json'}' --out reports/out")
    return code


if __name__ == "__main__":
    sys.exit(main())
