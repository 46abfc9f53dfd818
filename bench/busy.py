"""Does the noise test tell others' work from our own? ``python -m bench.busy``

    python -m bench.busy --out busy/                        # the quick sweep, idle then busy
    python -m bench.busy --out busy/ -- -k "jax and divergence and eval"

Runs ``pytest bench`` (the given pytest arguments after ``--``: a ``-k`` selection, a preset)
``--runs`` times idle, then as often beside ``--loops`` busy-loop processes (default 2), and
prints per point each run's median, noise flag, failed checks, CPU share and others' share,
then the rates: the fraction of points flagged noisy idle (at most ``--max-idle``, default
0.02), the fraction flagged busy, and of the points whose busy median moved more than
``--moved`` (default 1.5) times the idle one, the fraction flagged (all of them). Exit status
1 when either promise is broken (bench/harness/timing.py, the noise test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.telemetry import load_avg

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True: pass"
CONDITIONS = ("idle", "busy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.busy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per condition (default 1)")
    parser.add_argument("--loops", type=int, default=2, help="busy loops when busy (default 2)")
    parser.add_argument("--moved", type=float, default=1.5, help="a moved median (default 1.5)")
    parser.add_argument(
        "--max-idle", type=float, default=0.02, help="flagged idle, at most (default 0.02)"
    )
    parser.add_argument("--out", help="keep the JSON files here (default: a temporary folder)")
    parser.add_argument("pytest_args", nargs="*", help="pytest arguments, after --")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="hollowbench-busy-"))
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {condition: [] for condition in CONDITIONS}
    for condition in CONDITIONS:
        loops = args.loops if condition == "busy" else 0
        for i in range(1, args.runs + 1):
            path = out / f"{condition}-{i}.json"
            load = ", ".join(f"{v:.2f}" for v in load_avg() or ()) or "n/a"
            seconds = _run(path, args.pytest_args, loops)
            runs[condition].append({"load": load, "seconds": seconds, "points": _points(path)})
            print(
                f"{condition} run {i} ({loops} busy loops): load average {load} before, "
                f"{seconds:.0f} s",
                flush=True,
            )
    print()
    _table(runs, args.moved)
    rates = summary(runs, args.moved)
    print(_words(rates, args.moved, args.max_idle))
    print(f"JSON files: {out}")
    broken = rates["idle_rate"] > args.max_idle or rates["missed"]
    return 1 if broken else 0


def _run(path: Path, extra: list[str], loops: int) -> float:
    """One ``pytest bench`` run beside ``loops`` busy-loop processes; its wall seconds."""
    cmd = [
        *(sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider"),
        *("--benchmark-json", str(path), *extra),
    ]
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(loops)]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    finally:
        for loop in busy:
            loop.terminate()
            loop.wait()
    if done.returncode not in (0, 1):
        sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _points(path: Path) -> dict[str, dict]:
    """The timed points of one JSON file: median, flag and the noise test's figures."""
    out = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        info, stats = bench["extra_info"], bench.get("stats") or {}
        if not stats.get("median"):
            continue
        noise = info.get("noise") or {}
        out[bench["name"]] = {
            "median_ms": stats["median"] * 1e3,
            "noisy": bool(info.get("noisy")),
            "failed": noise.get("failed") or [],
            "cpu_share": info.get("cpu_share"),
            "others_share": noise.get("others_share"),
        }
    return out


def summary(runs: dict[str, list[dict]], moved: float) -> dict:
    """The rates: flagged idle and busy (over every timed point of every run), and of the
    points whose busy median over their idle median (each the median over the runs) is above
    ``moved``, how many were flagged in every busy run; ``missed`` names the rest."""

    def rate(condition: str) -> tuple[int, int]:
        points = [p for run in runs[condition] for p in run["points"].values()]
        return sum(p["noisy"] for p in points), len(points)

    def medians(condition: str) -> dict[str, float]:
        seen: dict[str, list[float]] = {}
        for run in runs[condition]:
            for name, p in run["points"].items():
                seen.setdefault(name, []).append(p["median_ms"])
        return {name: statistics.median(values) for name, values in seen.items()}

    idle, busy = medians("idle"), medians("busy")
    moved_names = sorted(n for n in idle.keys() & busy.keys() if busy[n] > moved * idle[n])
    missed = [
        name
        for name in moved_names
        if not all(run["points"][name]["noisy"] for run in runs["busy"] if name in run["points"])
    ]
    (idle_flagged, idle_n), (busy_flagged, busy_n) = rate("idle"), rate("busy")
    return {
        "idle_flagged": idle_flagged,
        "idle_points": idle_n,
        "idle_rate": idle_flagged / idle_n if idle_n else 0.0,
        "busy_flagged": busy_flagged,
        "busy_points": busy_n,
        "busy_rate": busy_flagged / busy_n if busy_n else 0.0,
        "moved": len(moved_names),
        "moved_flagged": len(moved_names) - len(missed),
        "missed": missed,
    }


def _words(rates: dict, moved: float, max_idle: float) -> str:
    idle_ok = "ok" if rates["idle_rate"] <= max_idle else f"BROKEN: over {max_idle:.0%}"
    recall = rates["moved_flagged"] / rates["moved"] if rates["moved"] else 1.0
    lines = [
        f"idle: {rates['idle_flagged']} of {rates['idle_points']} points flagged noisy "
        f"({rates['idle_rate']:.1%}): {idle_ok}",
        f"busy: {rates['busy_flagged']} of {rates['busy_points']} points flagged noisy "
        f"({rates['busy_rate']:.1%})",
        f"busy, median moved > {moved:g}x: {rates['moved_flagged']} of {rates['moved']} flagged "
        f"({recall:.1%}): {'ok' if not rates['missed'] else 'BROKEN'}",
        *(f"  moved but not flagged: {name}" for name in rates["missed"]),
    ]
    return "\n".join(lines) + "\n"


def _table(runs: dict[str, list[dict]], moved: float) -> None:
    names = sorted({name for done in runs.values() for run in done for name in run["points"]})
    heads = [f"{c} {i}" for c in CONDITIONS for i in range(1, len(runs[c]) + 1)]
    print("| point | " + " | ".join(heads) + " | busy / idle |")
    print("|---" * (len(heads) + 2) + "|")
    for name in names:
        cells, medians = [], {c: [] for c in CONDITIONS}
        for condition in CONDITIONS:
            for run in runs[condition]:
                p = run["points"].get(name)
                if p is None:
                    cells.append("not run")
                    continue
                medians[condition].append(p["median_ms"])
                flag = f"NOISY ({', '.join(p['failed'])})" if p["noisy"] else "clean"
                cells.append(
                    f"{p['median_ms']:.3f} ms, {flag}, share {_f(p['cpu_share'])}, "
                    f"others {_f(p['others_share'])}"
                )
        ratio = (
            statistics.median(medians["busy"]) / statistics.median(medians["idle"])
            if medians["busy"] and medians["idle"]
            else float("nan")
        )
        cells.append(f"{ratio:.2f}x" + (" (moved)" if ratio > moved else ""))
        print(f"| {name.split('[', 1)[-1].rstrip(']')} | {' | '.join(cells)} |")
    print()


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
