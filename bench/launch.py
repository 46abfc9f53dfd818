"""One sweep process per GPU on this node, each on its own shard.

    python -m bench.launch --gpus 4 --out results/ -- bench --bench-preset paper

Process i sees only GPU i (``CUDA_VISIBLE_DEVICES``: the i-th entry of the launcher's, else i)
and runs shard ``(a - 1) * N + i + 1`` of ``A * N`` on node a of A (a Slurm array task, or
``--shard a/A``), so all shards are disjoint and cover the grid. Each writes
``OUT/results-<shard>of<total>.json``, its journal and ``.log``; the exit status is the first
failure's. Processes, not xdist workers: pytest-benchmark switches itself off under xdist.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.harness.options import OptionError, parse_shard, slurm_shard, usable_cores

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


def commands(
    pytest_args: list[str], gpus: list[str], outer: tuple[int, int], out: Path
) -> list[tuple[list[str], dict[str, str], Path]]:
    """(argv, environment, log path) of each process: GPU ``gpus[i]``, its shard of the node's
    shard ``outer``, its own JSON under ``out``, and its share of the cores for compiling."""
    node, nodes = outer
    total = nodes * len(gpus)
    workers = str(max(1, usable_cores() // len(gpus)))
    runs = []
    for i, gpu in enumerate(gpus):
        index = (node - 1) * len(gpus) + i + 1
        json_file = out / f"results-{index}of{total}.json"
        shard = ["--bench-shard", f"{index}/{total}", "--benchmark-json", str(json_file)]
        argv = [sys.executable, "-m", "pytest", *pytest_args, *shard]
        env = os.environ | {"CUDA_VISIBLE_DEVICES": gpu}
        env.setdefault(WORKERS_ENV, workers)
        runs.append((argv, env, json_file.with_suffix(".log")))
    return runs


def launch(runs: list[tuple[list[str], dict[str, str], Path]]) -> int:
    """Run every process at once and wait for all; returns the first failure's exit status
    (0: all passed). Ctrl-C or SIGTERM (Slurm's end of a job) stops every process."""
    procs = []
    for argv, env, log in runs:
        with open(log, "w") as fh:
            procs.append(subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT))
    previous = signal.signal(signal.SIGTERM, lambda *_: _stop(procs))
    start = time.monotonic()
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    for (argv, env, log), code in zip(runs, codes, strict=True):
        shard = argv[argv.index("--bench-shard") + 1]
        print(f"shard {shard} on GPU {env['CUDA_VISIBLE_DEVICES']}: exit {code} ({log})")
        if code:
            print("".join(log.read_text().splitlines(keepends=True)[-LOG_TAIL:]), end="")
    print(f"{len(procs)} processes in {time.monotonic() - start:.0f} s")
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
    code = launch(commands(pytest_args, gpus, outer, out))
    print(f"report: python -m reports build '{out / 'results-*.json'}' --out reports/out")
    return code


if __name__ == "__main__":
    sys.exit(main())
