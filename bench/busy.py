"""Does timing hold up on a busy machine? ``python -m bench.busy``

    python -m bench.busy -k "..." --runs 3 --out busy/ -- --bench-backends torch

Runs a ``pytest bench -k EXPR`` selection ``--runs`` times beside a busy loop, then without,
and prints per point each run's median, rounds and noise flag and the medians' spread (max over
min), all and clean only: clean medians must agree within ``--within`` (bench/harness/timing.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.telemetry import load_avg

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.busy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-k", dest="expr", default="test_divergence and torch and d8 and eval")
    parser.add_argument("--runs", type=int, default=3, help="runs per condition (default 3)")
    parser.add_argument("--within", type=float, default=1.5, help="allowed spread (default 1.5)")
    parser.add_argument("--out", help="keep the JSON files here (default: a temporary folder)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="hollowbench-busy-"))
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"busy": [], "quiet": []}
    for condition in runs:
        for i in range(1, args.runs + 1):
            path = out / f"{condition}-{i}.json"
            load = ", ".join(f"{v:.2f}" for v in load_avg() or ()) or "n/a"
            seconds = _run(args.expr, path, args.pytest_args, busy=condition == "busy")
            runs[condition].append({"load": load, "seconds": seconds, "points": _points(path)})
            print(f"{condition} run {i}: load average {load} before, {seconds:.0f} s", flush=True)
    print()
    failed = sum(_report(condition, done, args.within) for condition, done in runs.items())
    print(f"JSON files: {out}")
    return 1 if failed else 0


def _run(expr: str, path: Path, extra: list[str], *, busy: bool) -> float:
    """One pytest run of the selection, beside a busy loop when ``busy``; its wall seconds."""
    cmd = [
        *(sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider"),
        *("-k", expr, "--benchmark-json", str(path), *extra),
    ]
    loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    finally:
        if loop is not None:
            loop.terminate()
            loop.wait()
    if done.returncode not in (0, 1):
        sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _points(path: Path) -> dict[str, dict]:
    out = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        out[bench["name"]] = {
            "median_ms": stats["median"] * 1e3,
            "rounds": stats["rounds"],
            "noisy": bool(info.get("noisy")),
            "remeasured": bool(info.get("remeasured")),
            "cpu_share": info.get("cpu_share"),
            "load_1m": info.get("load_1m"),
        }
    return out


def _report(condition: str, runs: list[dict], within: float) -> int:
    """Print one condition's table; return how many points broke the promise."""
    names = sorted({name for run in runs for name in run["points"]})
    print(f"## {condition}: load average before each run: {'; '.join(r['load'] for r in runs)}")
    print()
    heads = [f"run {i}: ms, rounds, noisy" for i in range(1, len(runs) + 1)]
    print("| point | " + " | ".join(heads) + " | spread | clean spread | verdict |")
    print("|---" * (len(runs) + 4) + "|")
    broken = 0
    for name in names:
        cells, medians, clean = [], [], []
        for run in runs:
            p = run["points"].get(name)
            if p is None:
                cells.append("not run")
                continue
            flag = "NOISY" if p["noisy"] else "clean"
            again = ", re-measured" if p["remeasured"] else ""
            share = f", share {p['cpu_share']:.2f}" if p["cpu_share"] is not None else ""
            cells.append(f"{p['median_ms']:.3f}, {p['rounds']}, {flag}{again}{share}")
            medians.append(p["median_ms"])
            if not p["noisy"]:
                clean.append(p["median_ms"])
        ok = len(clean) < 2 or _spread(clean) <= within
        broken += not ok
        verdict = "ok" if ok else f"BROKEN: clean runs differ by more than {within:g}x"
        cells += [f"{_spread(medians):.2f}x"]
        cells += [f"{_spread(clean):.2f}x" if len(clean) > 1 else f"{len(clean)} clean", verdict]
        print(f"| {name.split('[', 1)[-1].rstrip(']')} | {' | '.join(cells)} |")
    print()
    return broken


def _spread(values: list[float]) -> float:
    return max(values) / min(values) if len(values) > 1 and min(values) > 0 else float("nan")


if __name__ == "__main__":
    sys.exit(main())
