"""``python -m bench.busy``: the idle and busy rates of the noise test, from recorded runs (no
sweep runs here: ``_run`` writes the JSON a sweep would)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import busy


def point(median_ms: float, noisy: bool, others: float = 0.0) -> dict:
    return {
        "median_ms": median_ms,
        "noisy": noisy,
        "failed": ["cpu_share"] if noisy else [],
        "cpu_share": 0.4 if noisy else 0.6,
        "others_share": others,
    }


def test_the_rates_count_flagged_points_and_the_moved_ones_flagged():
    idle = {"a": point(1.0, False), "b": point(2.0, False), "c": point(3.0, True)}
    busy_ = {"a": point(2.0, True, 0.7), "b": point(3.5, False, 0.7), "c": point(3.3, True)}
    rates = busy.summary({"idle": [{"points": idle}], "busy": [{"points": busy_}]}, 1.5)
    assert (rates["idle_flagged"], rates["idle_points"]) == (1, 3)
    assert (rates["busy_flagged"], rates["busy_points"]) == (2, 3)
    # a moved 2x and b 1.75x; c 1.1x does not count
    assert rates["moved"] == 2 and rates["moved_flagged"] == 1 and rates["missed"] == ["b"]


def test_a_moved_point_must_be_flagged_in_every_busy_run():
    idle = [{"points": {"a": point(1.0, False)}}, {"points": {"a": point(1.2, False)}}]
    busy_ = [{"points": {"a": point(3.0, True)}}, {"points": {"a": point(3.0, False)}}]
    rates = busy.summary({"idle": idle, "busy": busy_}, 1.5)
    assert rates["missed"] == ["a"] and rates["busy_flagged"] == 1 and rates["busy_points"] == 2


def write_sweep(path: Path, points: dict[str, tuple[float, bool]]) -> None:
    benchmarks = [
        {
            "name": f"test_divergence[{name}]",
            "stats": {"median": ms / 1e3},
            "extra_info": {
                "noisy": noisy,
                "cpu_share": 0.5,
                "noise": {"failed": ["cpu_share"] if noisy else [], "others_share": 0.8},
            },
        }
        for name, (ms, noisy) in points.items()
    ] + [{"name": "test_divergence[skipped]", "stats": None, "extra_info": {}}]
    path.write_text(json.dumps({"benchmarks": benchmarks}))


def test_main_reports_both_rates_and_fails_a_broken_promise(tmp_path, monkeypatch, capsys):
    sweeps = {
        "idle": {"p1": (1.0, False), "p2": (1.0, False)},
        "busy": {"p1": (2.0, True), "p2": (2.0, False)},
    }
    calls = []

    def fake_run(path, extra, loops):
        calls.append((path.name, extra, loops))
        write_sweep(path, sweeps[path.name.split("-")[0]])
        return 1.0

    monkeypatch.setattr(busy, "_run", fake_run)
    status = busy.main(["--out", str(tmp_path), "--", "-k", "eval"])
    out = capsys.readouterr().out
    assert calls == [("idle-1.json", ["-k", "eval"], 0), ("busy-1.json", ["-k", "eval"], 2)]
    assert "idle: 0 of 2 points flagged noisy (0.0%): ok" in out
    assert "busy: 1 of 2 points flagged noisy (50.0%)" in out
    assert "moved but not flagged: test_divergence[p2]" in out and status == 1
    sweeps["busy"]["p2"] = (2.0, True)
    assert busy.main(["--out", str(tmp_path), "--loops", "3"]) == 0
    assert calls[-1][2] == 3
