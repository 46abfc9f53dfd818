"""The time-budgeted sweep (bench/harness/plan.py, ``--bench-budget``) and the GPU reference
plan (bench/reference.py): priorities, the cost model, the deadlines, and the clean stop.

The GPU plan is checked here, on the CPU, with the committed H100 journals as the cost model:
it must cover every claim and goal in both backends and predict no more than its budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import reference
from bench.harness import options, plan
from impls import FUSED_BASE

ROOT = Path(__file__).resolve().parents[1]
H100 = str(ROOT / reference.COSTS["cuda"])
# Claims covered at a spread of d: two d or more each; the applications fix their own d.
SPREAD_CLAIMS = ("a", "d", "fused", "C3", "C1", "c", "C2", "b")


def _settings(**raw: str) -> options.Settings:
    return options.resolve(raw, max_time=reference.MAX_TIME)


def _gpu_plan(backend: str) -> plan.Plan:
    settings = _settings(**reference.sweep_options("cuda:0", backend, H100))
    model = plan.CostModel.from_journals(
        settings.costs, timing=settings.timing, timeout_s=settings.timeout_s
    )
    points = plan.candidates(settings, {backend: ("cuda:0",)})
    return plan.make_plan(
        points,
        model,
        budget_s=settings.sweep_budget_s,
        left_s=(1 - plan.RESERVE) * settings.sweep_budget_s,
    )


def test_the_gpu_reference_plan_covers_every_claim_within_its_budget():
    assert reference.SMOKE_S + reference.REFERENCE_S <= reference.TOTAL_S <= 8 * 60
    by_title = {claim.title: claim.key for claim in plan.CLAIMS}
    for backend in reference.BACKENDS:
        planned = _gpu_plan(backend)
        chosen = [c for c in planned.order if c.id in planned.planned]
        predicted = sum(planned.predicted[c.id] for c in chosen)
        assert predicted <= reference.BUDGET_S[backend], (backend, predicted)
        for title, per_group in plan.coverage(chosen).items():
            dims = per_group[f"{backend} cuda:0"]
            enough = 2 if by_title[title] in SPREAD_CLAIMS else 1
            assert len(dims) >= enough, (backend, title, dims)
        # the fused kernel's points are among the first to run
        assert any(getattr(c.point, "variant", "") in FUSED_BASE for c in chosen)


def test_the_h100_journals_predict_the_headline_goals_points():
    # goal (a)'s points, in the variants that H100 run had (the fused kernels never ran there)
    goal_a = plan.CLAIMS[0]
    for backend in reference.BACKENDS:
        planned = _gpu_plan(backend)
        points = [c for c in planned.order if c.id in planned.planned and goal_a.needs(c)]
        known = [c for c in points if c.point.variant in ("eager", "cudagraph", "jit")]
        sources = {planned.model.predict(c)[1] for c in known}
        assert known and sources == {"journal"}, (backend, sources)


def _point(**fields) -> plan.Candidate:
    from bench.workloads.operators import Point

    p = Point("divergence", "torch", "cpu", fields.pop("method", "hollow"),
              fields.pop("model", "hollownet"), fields.pop("d", 8), 32, 1,
              fields.pop("mode", "train"), fields.pop("n_probes", None))  # fmt: skip
    params = dict(zip(p.param_names(), p.params, strict=True))
    return plan.Candidate(f"test_divergence[{p.id}]", "divergence", p, params)


def test_claims_get_their_first_points_at_a_spread_of_d_before_anything_else():
    assert plan.spread([8, 32, 128, 512, 4096]) == [8, 128, 4096]
    points = [_point(d=d) for d in (8, 32, 128)] + [
        _point(d=d, model="mlp_flop_matched", method="hutchinson", n_probes=1) for d in (8, 128)
    ]
    points.append(_point(d=8, method="dense_loop", mode="eval"))
    ranks = plan.priorities(points, cost=lambda c: c.d)
    first = sorted(points, key=lambda c: ranks[c.id])
    # goal (a): hollow and Hutchinson-1 at the smallest, then the middle (here the largest)
    # common d; d = 32 has no Hutchinson point, so comes in for goal (d) after them; last the
    # dense point, which covers no claim (C2 needs the other dense method beside it)
    assert [(c.point.method, c.d) for c in first] == [
        ("hollow", 8), ("hutchinson", 8), ("hollow", 128), ("hutchinson", 128), ("hollow", 32),
        ("dense_loop", 8),
    ]  # fmt: skip
    assert ranks[points[-1].id][0] == 3


def test_a_point_predicted_not_to_fit_covers_no_claim_and_is_not_planned():
    import dataclasses

    fits = [_point(d=d) for d in (8, 128)]
    big = dataclasses.replace(
        _point(d=512, model="mlp_flop_matched", method="hutchinson", n_probes=1), fits=False
    )
    hutch = _point(d=8, model="mlp_flop_matched", method="hutchinson", n_probes=1)
    ranks = plan.priorities([*fits, hutch, big], cost=lambda c: c.d)
    assert ranks[big.id][0] == 3  # goal (a) has d = 8 only: 512's pair will not run
    model = plan.CostModel(timing=_settings().timing, timeout_s=0)
    assert (
        big.id not in plan.make_plan([*fits, hutch, big], model, budget_s=1e6, left_s=1e6).planned
    )


def _record(d: int, wall_s: float, median: float | None, rounds: int = 10) -> dict:
    params = _point(d=d).params
    stats = {"median": median, "rounds": rounds} if median else None
    return {"kind": "point", "params": dict(params), "extra_info": {"wall_s": wall_s,
            "workload": "divergence"}, "stats": stats}  # fmt: skip


def test_costs_come_from_the_same_point_then_its_family_then_a_prior():
    timing = _settings().timing
    model = plan.CostModel(timing=timing, timeout_s=0)
    for d, wall, call in ((8, 2.0, 0.01), (128, 4.0, 0.04)):
        model.learn("divergence", _record(d, wall, call)["params"], _record(d, wall, call), 1)
    exact, source = model.predict(_point(d=8))
    assert source == "journal" and exact > 1.0  # its one-off seconds, then today's rounds
    between, _ = model.predict(_point(d=32))
    beyond, _ = model.predict(_point(d=512))
    assert exact < between < model.predict(_point(d=128))[0] < beyond
    assert model.predict(_point(d=8, mode="eval"))[1] == "prior"
    capped = plan.CostModel(timing=timing, timeout_s=3.0)
    capped.learn("divergence", _record(8, 100.0, None)["params"], _record(8, 100.0, None), 1)
    assert capped.predict(_point(d=8)) == (4.0, "journal")  # a point stops at its limit


def test_deadlines_admit_what_fits_and_learn_from_what_ran():
    points = [_point(d=d) for d in (8, 32, 128)]
    model = plan.CostModel(timing=_settings().timing, timeout_s=0)
    budget = plan.make_plan(points, model, budget_s=1000.0, left_s=1000.0)
    budget.predicted = dict.fromkeys(budget.predicted, 10.0)
    budget.start(now=0.0, left_s=30.0)
    assert budget.deadlines == {("torch", "cpu"): 30.0}
    assert budget.admit(points[0].id, now=0.0) is None
    assert "budget" in budget.admit(points[0].id, now=25.0)
    assert budget.time_left(points[0].id, now=25.0) == 5.0
    ran = _record(8, 30.0, 0.01) | {"params": points[0].params}
    budget.done(points[0].id, ran)  # three times its prediction: later ones are corrected
    assert budget.correction(("torch", "cpu")) == 3.0
    assert "budget" in budget.admit(points[1].id, now=1.0)


SWEEP = [
    "bench/test_divergence.py", "-p", "no:cacheprovider", "--benchmark-max-time", "0.001",
    "--bench-backends", "torch", "--bench-devices", "cpu", "--bench-models", "hollownet",
    "--bench-methods", "hollow,hollow_forward,hutchinson", "--bench-modes", "eval",
    "--bench-n-probes", "1", "--bench-dims", "2-5",
]  # fmt: skip


def _sweep(tmp_path: Path, *args: str, inject: str) -> tuple[dict | None, list[dict]]:
    """(the JSON, None where no point ran; the journal's records)."""
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "pytest", *SWEEP, *args, "--benchmark-json", str(out)]
    env = os.environ | {"HOLLOWBENCH_INJECT": inject}
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:]
    lines = out.with_suffix(".journal.jsonl").read_text().splitlines()
    return json.loads(out.read_text()) if out.exists() else None, list(map(json.loads, lines))


@pytest.mark.sweep
@pytest.mark.parametrize("budget", ["10"])
def test_a_budgeted_sweep_runs_what_fits_and_records_the_rest(tmp_path, budget):
    result, journal = _sweep(tmp_path, "--bench-budget", budget, inject="delay=1")
    found = result["hollowbench"]["plan"]
    assert found["budget_s"] == float(budget) and found["planned"] >= 1
    ran = {b["name"] for b in result["benchmarks"]}
    left = {r["id"].split("::")[1] for r in found["left_out"]}
    assert ran and left and not ran & left and len(ran) == found["run"]
    assert len(ran | left) == 12  # every point: run, or left out with the reason
    assert all(r["reason"].startswith("budget") for r in found["left_out"])
    assert [r["kind"] for r in journal[:2]] == ["session", "plan"]
    assert result["hollowbench"]["settings"]["sweep_budget_s"] == float(budget)


@pytest.mark.sweep
def test_a_point_still_running_at_the_budgets_end_is_stopped_there(tmp_path):
    # the injected time-out sleeps 201 s, past the per-point limit; the budget stops it first
    args = ("--bench-budget", "8", "--bench-timeout", "100", "--bench-dims", "2")
    _, journal = _sweep(tmp_path, *args, inject="timeout=*hollow-d2*")
    points = [r["extra_info"] for r in journal if r["kind"] == "point"]
    (stopped,) = [info for info in points if info["status"] == "timeout"]
    assert "share of the sweep's budget" in stopped["reason"]
    assert stopped["wall_s"] < 100  # stopped by the budget, long before the per-point limit


def test_budget_options_are_checked_and_recorded():
    assert _settings(budget="90", costs="a.jsonl,b/*.jsonl").costs == ("a.jsonl", "b/*.jsonl")
    with pytest.raises(options.OptionError, match="--bench-budget"):
        _settings(budget="soon")
    assert _settings().sweep_budget_s == 0
