"""Scale-out: shards from a Slurm job array's environment, and bench.launch's one process per
GPU (run here as CPU processes on a tiny sweep); with a Slurm cluster answering, an array of
launchers through sbatch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import launch
from bench.harness import options

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "bench/test_divergence.py", "-p", "no:cacheprovider", "--benchmark-max-time", "0.001",
    "--benchmark-min-rounds", "2",
    "--bench-backends", "torch", "--bench-devices", "cpu", "--bench-models", "hollownet",
    "--bench-methods", "hollow,hollow_forward,hutchinson", "--bench-modes", "eval",
    "--bench-n-probes", "1", "--bench-dims", "2-4",
]  # fmt: skip


def _array(task: int, count: int, low: int, step: int | None = None) -> dict[str, str]:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count),
           "SLURM_ARRAY_TASK_MIN": str(low)}  # fmt: skip
    return env | ({"SLURM_ARRAY_TASK_STEP": str(step)} if step is not None else {})


@pytest.mark.parametrize("low", [0, 1, 7])
def test_a_slurm_array_task_picks_its_shard(low):
    shards = [options.resolve({}, environ=_array(low + i, 3, low)).shard for i in range(3)]
    assert shards == [(1, 3), (2, 3), (3, 3)]
    s = options.resolve({}, environ=_array(low + 2, 3, low))
    assert s.shard_source.startswith(f"slurm array task {low + 2}")
    assert s.describe()["shard_source"] == s.shard_source


def test_a_stepped_array_and_no_array():
    assert options.resolve({}, environ=_array(4, 3, 0, step=2)).shard == (3, 3)  # ids 0, 2, 4
    s = options.resolve({}, environ={"SLURM_JOB_ID": "5"})  # a job, not an array
    assert (s.shard, s.shard_source) == ((1, 1), "default")


def test_an_explicit_shard_wins_over_the_array():
    s = options.resolve({"shard": "1/2"}, environ=_array(2, 3, 0))
    assert (s.shard, s.shard_source) == ((1, 2), "option")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is unset"),
        (_array(1, 3, 0) | {"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID is 'x'"),
        (_array(3, 3, 0), "task 3 is not one of the 3 ids 0, 1"),
        (_array(3, 3, 0, step=2), "task 3 is not one of the 3 ids 0, 2"),
        (_array(0, 3, 1), "task 0 is not one of"),
        (_array(1, 0, 1), "not one of the 0 ids"),
    ],
)
def test_bad_array_variables_are_a_clear_error(env, words):
    with pytest.raises(options.OptionError, match="Slurm array sharding") as info:
        options.resolve({}, environ=env)
    assert words in str(info.value) and "--bench-shard" in str(info.value)


def test_the_launcher_gives_each_gpu_its_shard_of_the_nodes(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    gpus = launch.visible_gpus(2)
    chains = launch.commands(["bench", "-q"], gpus, (2, 3), tmp_path)  # node 2 of 3 array tasks
    runs = [run for chain in chains for run in chain]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env, _ in runs] == ["4", "5"]
    shards = [argv[argv.index("--bench-shard") + 1] for argv, _, _ in runs]
    assert shards == ["3/6", "4/6"]
    assert [log.name for _, _, log in runs] == ["results-3of6.log", "results-4of6.log"]
    # each process runs on its GPU alone, not on the CPU as well
    assert all(argv[argv.index("--bench-devices") + 1] == "cuda:0" for argv, _, _ in runs)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES lists 3"):
        launch.visible_gpus(4)
    with pytest.raises(SystemExit):  # the launcher owns the shard and the JSON
        launch.main(["--gpus", "2", "--", "bench", "--bench-shard", "1/2"])


def test_per_backend_chains_one_process_per_backend_on_each_gpu(tmp_path):
    chains = launch.commands(["bench", "--bench-devices", "cuda:0"], ["0", "1"], (1, 1),
                             tmp_path, ("torch", "jax"))  # fmt: skip
    assert [[log.name for _, _, log in chain] for chain in chains] == [
        ["results-1of2-torch.log", "results-1of2-jax.log"],
        ["results-2of2-torch.log", "results-2of2-jax.log"],
    ]
    for argv, _, _ in chains[0]:  # the user's devices kept, not repeated
        assert argv.count("--bench-devices") == 1 and "--bench-backends" in argv


def _ids(result: dict) -> set[str]:
    return {b["name"] for b in result["benchmarks"]} | {
        r["name"] for r in result["hollowbench"]["not_run"]
    }


def _launch(args: list[str], out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench.launch", *args, "--out", str(out), "--", *TINY]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _single_run(out: Path) -> set[str]:
    cmd = [sys.executable, "-m", "pytest", *TINY, "--benchmark-json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    return _ids(json.loads(out.read_text()))


@pytest.mark.sweep
def test_the_launcher_runs_disjoint_complete_shards_and_they_merge(tmp_path):
    run = _launch(["--gpus", "2"], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(tmp_path.glob("results-*.json"))
    assert [f.name for f in files] == ["results-1of2.json", "results-2of2.json"]
    shards = [_ids(json.loads(f.read_text())) for f in files]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == _single_run(tmp_path / "single.json")
    assert all(f.with_suffix(".journal.jsonl").exists() for f in files)
    merged = tmp_path / "merged.json"
    merge = subprocess.run([sys.executable, "-m", "reports", "merge", str(merged),
                            str(tmp_path / "results-*.json")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert merge.returncode == 0, merge.stderr
    assert _ids(json.loads(merged.read_text())) == shards[0] | shards[1]


@pytest.mark.sweep
def test_the_launcher_fails_when_a_process_fails(tmp_path):
    run = _launch(["--gpus", "2"], tmp_path, env=_env_with(HOLLOWBENCH_INJECT="bogus"))
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout
    assert "exit 4" in run.stdout and "$HOLLOWBENCH_INJECT): 'bogus'" in run.stdout


def _env_with(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HOLLOWBENCH_")} | extra


def _slurm_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.sweep
@pytest.mark.skipif(not _slurm_answers(), reason="no Slurm cluster answers (sinfo)")
def test_an_sbatch_array_of_launchers_covers_the_grid(tmp_path):
    """docs/gpus.md's recipe through a real Slurm: a 2-task array (ids from 1), 2 processes
    each, 4 disjoint shards that together are the whole grid."""
    script = tmp_path / "job.sh"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --array=1-2
        #SBATCH --output={tmp_path}/slurm-%a.log
        cd {ROOT}
        {sys.executable} -m bench.launch --gpus 2 --out {tmp_path} -- {" ".join(TINY)}
    """)
    )
    run = subprocess.run(["sbatch", "--wait", str(script)], capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.log"))
    assert run.returncode == 0, run.stderr + logs[-3000:]
    files = sorted(tmp_path.glob("results-*.json"))
    assert [f.name for f in files] == [f"results-{i}of4.json" for i in range(1, 5)]
    shards = [_ids(json.loads(f.read_text())) for f in files]
    assert sum(map(len, shards)) == len(set().union(*shards))
    assert set().union(*shards) == _single_run(tmp_path / "single.json")
