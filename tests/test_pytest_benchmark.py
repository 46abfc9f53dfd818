"""The pytest-benchmark behaviours the harness relies on, pinned: a release that changes one
fails here, not silently in the sweep's timings (bench/harness/timing.py, sweep.py).

The harness uses pytest-benchmark's public surface only: the ``benchmark`` fixture's
``pedantic``, ``extra_info``, ``group``, ``name``, ``fullname`` and ``enabled``, and the
``benchmark`` mark's ``timer`` option; it reads none of its internal state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.harness import timing

ROOT = Path(__file__).resolve().parents[1]

PINNED = """
import pytest

from bench.harness import timing


def test_pedantic_runs_and_records_each_round(benchmark):
    benchmark.extra_info["mine"] = {"a": 1}
    benchmark.group = "the group"
    calls = []
    assert benchmark.pedantic(lambda: calls.append(1) or 5, rounds=7, iterations=1) == 5
    assert len(calls) == 7


@timing.MARK
@pytest.mark.parametrize("d", [8])
def test_hand_over(benchmark, d):
    assert benchmark.enabled
    assert benchmark.name == "test_hand_over[8]"
    assert benchmark.fullname.endswith("test_pinned.py::test_hand_over[8]")
    benchmark.extra_info["status"] = "ok"
    timing.hand_over(benchmark, [0.003, 0.001, 0.002, 0.0015])


@timing.MARK
def test_a_skipped_point_is_left_out(benchmark):
    benchmark.extra_info["status"] = "oom"
    pytest.skip("not run")


def test_hand_over_needs_the_mark(benchmark):
    with pytest.raises(RuntimeError, match="MARK"):
        timing.hand_over(benchmark, [0.001, 0.002])


def test_disabled(benchmark):
    if not benchmark.enabled:  # --benchmark-disable: the target runs once, nothing is timed
        calls = []
        assert benchmark.pedantic(lambda: calls.append(1) or 5) == 5 and calls == [1]
    else:
        benchmark.pedantic(lambda: None)
"""


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    test = tmp_path / "test_pinned.py"
    test.write_text(textwrap.dedent(PINNED))
    out = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider",
        "--rootdir", str(tmp_path), "--benchmark-json", str(out), *extra,
    ]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    return run, out


def test_what_the_harness_relies_on(tmp_path):
    run, out = _run(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    benchmarks = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    # A test skipped before it handed anything over is not in the JSON.
    assert "test_a_skipped_point_is_left_out" not in benchmarks
    # pedantic with N rounds of 1 iteration records N data points; extra_info and group land.
    plain = benchmarks["test_pedantic_runs_and_records_each_round"]
    assert plain["stats"]["rounds"] == len(plain["stats"]["data"]) == 7
    assert plain["stats"]["iterations"] == 1
    assert plain["extra_info"] == {"mine": {"a": 1}} and plain["group"] == "the group"
    # The timer of the benchmark mark is read twice a round, around the target: the kept
    # measurement lands exactly, and pytest-benchmark's figures of it are timing.summary's.
    handed = benchmarks["test_hand_over[8]"]
    data = [0.003, 0.001, 0.002, 0.0015]
    assert handed["stats"]["data"] == data and handed["params"] == {"d": 8}
    assert handed["extra_info"] == {"status": "ok"}
    assert handed["options"]["timer"] == "hollowbench_clock"
    summary = timing.summary(data)
    assert {k: handed["stats"][k] for k in summary} == summary


def test_a_disabled_benchmark_runs_its_target_once(tmp_path):
    run, _ = _run(tmp_path, "--benchmark-disable", "-k", "disabled")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout
