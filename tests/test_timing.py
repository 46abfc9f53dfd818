"""Timing on a busy machine (bench/harness/timing.py): calibration from several warm-up calls,
the noise test, the one re-measurement, and the conditions each point records.

The load is injected, never real: scripted call times for the calibration rules, and sleeps
inside chosen calls (HOLLOWBENCH_INJECT noise=GLOB, or a disturbance hook) for the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.harness import telemetry, timing
from bench.harness.presets import Timing
from bench.schema import INFO_KEYS

ROOT = Path(__file__).resolve().parents[1]
QUICK = Timing(budget_s=1.0, min_rounds=3, max_rounds=30)


# --- calibration --------------------------------------------------------------------------


def scripted(monkeypatch, seconds: list[float]) -> list[float]:
    """Make timing's calls take ``seconds`` in turn (no real time passes); returns what is
    left, so a test can count the calls made."""
    left = list(seconds)

    def timed(call):
        return call(), left.pop(0)

    monkeypatch.setattr(timing, "_timed", timed)
    return left


def test_one_slow_warm_up_call_does_not_cut_the_rounds(monkeypatch):
    # first call (one-off costs), then a warm-up call caught in a burst, then quiet calls
    left = scripted(monkeypatch, [0.5, 0.9, 0.01, 0.01, 0.01, 0.01, 99])
    _, seconds = timing.warm_up(lambda: None, QUICK.budget_s)
    # the median of 3 warm-up calls, which took half the budget
    assert seconds == 0.01 and left == [0.01, 0.01, 99]
    assert timing.rounds_for(seconds, QUICK) == 30  # one call alone would have given 3


def test_warm_up_is_bounded_in_time(monkeypatch):
    left = scripted(monkeypatch, [0.3, 0.3, 0.3, 0.3, 99])
    _, seconds = timing.warm_up(lambda: None, QUICK.budget_s)
    assert seconds == 0.3 and left == [99]  # 3 calls reached half the budget
    left = scripted(monkeypatch, [0.1, 0.6, 0.6, 99])
    timing.warm_up(lambda: None, QUICK.budget_s)
    assert left == [99]  # two calls took the whole budget: no third


def test_a_call_slower_than_the_budget_runs_once_then_is_timed(monkeypatch):
    left = scripted(monkeypatch, [2.0, 99])
    _, seconds = timing.warm_up(lambda: None, QUICK.budget_s)
    assert seconds == 2.0 and left == [99]
    assert timing.rounds_for(seconds, Timing(1.0, 1, 30)) == 1
    assert timing.rounds_for(seconds, QUICK) == 3  # the preset's minimum still holds


def test_a_fast_call_gets_at_least_five_rounds():
    assert timing.rounds_for(0.19, Timing(1.0, 1, 3)) == timing.FAST_MIN_ROUNDS
    assert timing.rounds_for(0.25, Timing(1.0, 1, 3)) == 3  # not under a fifth of the budget


# --- the noise test -----------------------------------------------------------------------


def test_the_noise_test_names_the_checks_a_measurement_fails():
    rule = timing.RULE
    quiet = timing.Measurement([1.0, 1.01, 1.02, 0.99, 1.0], cpu_share=0.99).figures()
    assert timing.failures(quiet, rule) == [] and quiet["rounds"] == 5
    burst = timing.Measurement([1.0] * 12 + [9.0, 9.0], cpu_share=0.99).figures()
    assert timing.failures(burst, rule) == ["max2_min"]
    spread = timing.Measurement([1.0, 1.0, 2.0, 2.0, 2.0, 3.0], cpu_share=None).figures()
    assert "iqr_median" in timing.failures(spread, rule)
    starved = timing.Measurement([1.0] * 5, cpu_share=0.3, others_share=0.6).figures()
    assert timing.failures(starved, rule) == ["cpu_share"]
    unknown = timing.Measurement([1.0] * 5, cpu_share=0.3).figures()  # others not measured
    assert timing.failures(unknown, rule) == ["cpu_share"]
    alone = timing.Measurement([1.0] * 5, cpu_share=0.3, others_share=0.0).figures()
    assert timing.failures(alone, rule) == []  # its own threads kept each other waiting


def test_one_slow_round_in_thirty_is_not_noise_two_are():
    rounds = [1e-3 * (1 + 0.01 * (i % 5)) for i in range(29)]
    one = timing.Measurement([*rounds, 0.05]).figures()  # a 50x round: a page fault, a tick
    assert one["max2_min"] == pytest.approx(1.04) and timing.failures(one) == []
    two = timing.Measurement([*rounds[:28], 0.05, 0.05]).figures()
    assert two["max2_min"] == pytest.approx(50) and timing.failures(two) == ["max2_min"]
    single = timing.Measurement([0.002]).figures()  # no second-largest: the one round
    assert single["max2_min"] == 1 and timing.failures(single) == []


# (cpu_share, others_share). Alone: on an idle 2-core machine the quick sweep's JAX points
# got shares of 0.54-0.80 (XLA's pool keeps more threads runnable than cores; two sweeps'
# medians agreed within 1%), torch with 8 threads 0.22 and a small jitted JAX MLP 0.45-0.57
# here; nothing else ran, so others' share is ~0 (up to the 10 ms ticks' error, < 0.05 over
# 0.5 s). Beside two busy loops on this shared 2-core machine the same calls recorded these.
ALONE = [(0.54, 0.0), (0.62, 0.02), (0.80, 0.05), (0.22, 0.0), (0.45, 0.05)]
BESIDE_BUSY_LOOPS = [(0.15, 0.72), (0.24, 0.72), (0.26, 0.87), (0.33, 0.90), (0.35, 0.96),
                     (0.22, 0.74), (0.49, 0.73), (0.68, 0.72)]  # fmt: skip


@pytest.mark.parametrize(("share", "others", "noisy"),
                         [(*alone, False) for alone in ALONE]
                         + [(*busy, True) for busy in BESIDE_BUSY_LOOPS])  # fmt: skip
def test_waiting_counts_as_noise_only_while_others_held_the_cores(share, others, noisy):
    figures = timing.Measurement([1e-3] * 30, cpu_share=share, others_share=others).figures()
    assert bool(timing.failures(figures)) is noisy


def test_the_quieter_measurement_is_kept():
    clean = timing.Measurement([2.0, 2.0, 2.1], cpu_share=1.0)
    burst = timing.Measurement([1.0, 1.0, 50.0], cpu_share=1.0)
    assert timing.quieter(burst, clean) == 1  # the one that passes, though its median is higher
    assert timing.quieter(clean, burst) == 0
    slow = timing.Measurement([3.0, 3.0, 3.0], cpu_share=0.2)
    starved = timing.Measurement([2.5, 2.5, 2.5], cpu_share=0.2)
    assert timing.quieter(slow, starved) == 1  # both fail: the lower median


def test_a_noisy_measurement_is_taken_again_and_the_quieter_kept():
    pauses = []

    def disturb(phase, index):
        if phase == "timed" and index < 2:
            timing.time.sleep(0.05)  # a burst over the first two rounds only

    outcome = timing.measure(
        lambda: timing.time.sleep(0.002), 10, QUICK,
        rule=timing.NoiseRule(max2_min=10, cpu_share=0.0), disturb=disturb, sleep=pauses.append,
    )  # fmt: skip
    info = outcome.info()
    assert pauses == [timing.NoiseRule().pause_s] and info["remeasured"] and not info["noisy"]
    first, again = info["noise"]["measurements"]
    assert "max2_min" in first["failed"] and again["failed"] == [] and info["noise"]["kept"] == 1
    # the kept measurement's stats (the journal's; pytest-benchmark is handed its data)
    kept = timing.summary(outcome.measurements[1].data)
    assert kept["rounds"] == again["rounds"] and kept["median"] == again["median_s"]
    assert again["rounds"] == QUICK.max_rounds  # recalibrated from the first median


def test_no_remeasurement_runs_past_the_point_s_time_limit():
    rule = timing.NoiseRule(iqr_median=-1, max2_min=0)  # every measurement fails
    soon = timing.time.perf_counter() + rule.pause_s / 2
    outcome = timing.measure(lambda: None, 3, QUICK, rule=rule, deadline=soon)
    info = outcome.info()
    assert not info["remeasured"] and info["noisy"] and "max2_min" in info["noise"]["failed"]


def test_a_quiet_measurement_is_taken_once():
    rule = timing.NoiseRule(max2_min=50, iqr_median=5, cpu_share=0.0)
    call = lambda: timing.time.sleep(0.001)  # noqa: E731
    info = timing.measure(call, 5, QUICK, rule=rule, sleep=pytest.fail).info()
    assert not info["remeasured"] and not info["noisy"] and info["noise"]["kept"] == 0
    assert len(info["noise"]["measurements"]) == 1


# --- conditions ---------------------------------------------------------------------------


def test_cpu_share_is_run_time_over_ready_time():
    before = {"1": (0, 0), "2": (5_000_000, 0)}
    after = {"1": (3_000_000, 1_000_000), "2": (6_000_000, 0), "3": (0, 0)}
    assert telemetry.cpu_share(before, after) == pytest.approx(4 / 5)
    assert telemetry.cpu_share(before, before) is None  # nothing ran: nothing to judge
    assert telemetry.cpu_share(None, after) is None
    snap = telemetry.cpu_snapshot()
    if snap is not None:  # Linux
        assert all(run >= 0 and wait >= 0 for run, wait in snap.values())


def core_times(wall: float, idle: float, own: float) -> telemetry.CoreTimes:
    return telemetry.CoreTimes(wall=wall, idle=idle, own=own, cores=2)


def test_others_share_is_what_the_cores_neither_idled_nor_ran_us_for():
    start = core_times(10.0, 100.0, 5.0)
    # 1 s on 2 cores: we ran 1.5 s (all our threads), the cores idled 0.5 s: nobody else ran.
    assert telemetry.others_share(start, core_times(11.0, 100.5, 6.5)) == 0.0
    # we ran 0.5 s, they idled 0.3 s: others held 1.2 s of the 2.
    assert telemetry.others_share(start, core_times(11.0, 100.3, 5.5)) == pytest.approx(0.6)
    assert telemetry.others_share(start, core_times(11.0, 100.0, 7.0)) == 0.0  # ticks vs ns
    assert telemetry.others_share(start, start) is None
    assert telemetry.others_share(None, start) is None


def test_a_short_measurement_judges_others_over_a_longer_window(monkeypatch):
    history = [core_times(t, 0.0, 0.0) for t in (1.0, 9.0, 9.4, 9.8)]
    monkeypatch.setattr(telemetry, "HISTORY", history)
    start, end = history[-1], core_times(9.815, 0.0, 0.0)  # a 15 ms measurement
    assert telemetry.window_start(start, end) is history[1]  # the latest >= 0.5 s before its end
    long = core_times(10.5, 0.0, 0.0)
    assert telemetry.window_start(start, long) is start  # long enough alone
    monkeypatch.setattr(telemetry, "HISTORY", history[-1:])
    assert telemetry.window_start(start, end) is start  # nothing older: its own window


def test_core_times_reads_the_usable_cores_from_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  9 9 9 9 9 9 9 9 0 0\n"
        "cpu0 10 0 5 200 7 0 1 0 0 0\n"
        "cpu1 10 0 5 300 3 0 1 0 0 0\n"
        "cpu2 10 0 5 999 9 0 1 0 0 0\n"
        "intr 12345\n"
    )
    monkeypatch.setattr(telemetry, "_usable_cores", lambda: {0, 1})
    tick = telemetry.os.sysconf("SC_CLK_TCK")
    reading = telemetry.core_times(str(stat))
    assert reading.cores == 2 and reading.idle == pytest.approx(510 / tick)
    assert telemetry.HISTORY[-1] is reading
    assert telemetry.core_times(str(tmp_path / "missing")) is None


def test_a_busy_loop_beside_us_is_others_work():
    """While we sleep, a busy-loop child takes CPU time that others_seconds must count (or, on
    a machine so loaded that the loop gets little, the load that starves it does)."""
    before = telemetry.core_times()
    if before is None:
        pytest.skip("no /proc/stat")
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        timing.time.sleep(0.6)
    finally:
        loop.kill()
        loop.wait()
    after = telemetry.core_times()
    assert telemetry.others_seconds(before, after) > 0.25
    assert telemetry.others_share(before, after) > 0.25 / after.cores


class FakeNvml:
    """The pynvml calls telemetry.Conditions makes, on one fake GPU that another process
    shares, throttled for power at the start and for heat at the end."""

    NVML_CLOCK_SM = 1

    def __init__(self):
        self.reads = 0

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        import os

        me = SimpleNamespace(pid=os.getpid(), usedGpuMemory=1)
        return [me, SimpleNamespace(pid=4242, usedGpuMemory=2**30)]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock == self.NVML_CLOCK_SM
        self.reads += 1
        return 1980 if self.reads == 1 else 1410

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x4 if self.reads < 1 else 0x20 | 0x40 | 0x1000


def test_conditions_read_the_gpu_through_nvml(monkeypatch):
    nvml = telemetry._Nvml()
    nvml._lib, nvml._tried = FakeNvml(), True
    monkeypatch.setattr(telemetry, "NVML", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    conditions = telemetry.Conditions("cuda:0")
    conditions.start()
    info = conditions.stop()
    assert info["gpu_processes"] == [{"pid": 4242, "used_memory_bytes": 2**30}]  # not ours
    assert info["sm_clock_mhz"] == [1980, 1410]
    assert info["throttle_reasons"] == [
        ["sw_power_cap"],
        ["sw_thermal_slowdown", "hw_thermal_slowdown", "0x1000"],
    ]
    assert set(info) == set(telemetry.CONDITION_KEYS)


def test_conditions_without_nvml_record_the_load_only(monkeypatch):
    nvml = telemetry._Nvml()
    nvml._lib, nvml._tried = None, True  # no pynvml, no driver
    monkeypatch.setattr(telemetry, "NVML", nvml)
    for device in ("cpu", "cuda:0"):
        conditions = telemetry.Conditions(device)
        conditions.start()
        info = conditions.stop()
        assert info["gpu_processes"] is info["sm_clock_mhz"] is info["throttle_reasons"] is None
        assert info["load_1m"] is None or info["load_1m"] >= 0


def test_the_rule_in_the_schema_the_readme_and_the_docs_is_the_code_s():
    texts = [
        (ROOT / path).read_text()
        for path in ("results_format/SCHEMA.md", "README.md", "docs/timing.md")
    ]
    schema = texts[0]
    words = timing.rule_text()
    for name, value in timing.RULE.limits().items():
        assert f"`{name}` {'<' if name == 'cpu_share' else '>'} {value:g}" in words, name
    for text in texts:  # word for word, however the lines wrap
        assert words in " ".join(text.split())
        assert f"after a {timing.RULE.pause_s:g} s pause" in " ".join(text.split())
    other = timing.rule_text(timing.NoiseRule(others_share=0.3))
    assert other not in " ".join(schema.split())  # the check can fail


# --- through pytest-benchmark, in a subprocess --------------------------------------------

NAP_MS = 5.0
NAP_TEST = """
import time

from bench.harness import journal, options
from bench.harness.sweep import Case, Sweep, Task
from bench.harness.timing import MARK, NoiseRule


class Backend:  # the parts of impls.Backend that Sweep.run uses
    name, device, default_variant = "torch", "cpu", "eager"

    def matmul_precision(self):
        return "highest"

    def compile_step(self, fn, args, variant):
        return fn, None, None

    def memory_available(self):
        return None

    def reset_peak_memory(self):
        return False

    def device_name(self):
        return None

    def sync(self, *arrays):
        pass

    def warm_up(self):
        pass

    release_memory = warm_up


def nap():  # a call of a fixed wall time: a sleeping thread wakes on time on a busy machine
    time.sleep({nap_s})


@MARK  # pytest-benchmark reads the harness's clock (as on every point of the sweep)
def test_nap(benchmark, tmp_path):
    sweep = Sweep(options.resolve({{"inject": {inject!r}}}), journal.Journal(tmp_path / "j", dict))
    # A nap uses no CPU to speak of, so its CPU share says nothing: the test leaves it out.
    sweep.rule = NoiseRule(cpu_share=0.0, pause_s=0.1)
    sweep.run(benchmark, Case(Backend(), lambda: Task(lambda: nap(), ()), {{"workload": "nap"}}))
"""


def nap_run(tmp_path: Path, inject: str) -> dict:
    """The JSON of one nap point timed by the harness (the quick preset's budget)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    test = tmp_path / "test_nap.py"
    test.write_text(textwrap.dedent(NAP_TEST.format(nap_s=NAP_MS / 1e3, inject=inject)))
    out = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider",
        "--benchmark-json", str(out), "--rootdir", str(tmp_path),
    ]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    return bench


@pytest.mark.sweep
def test_an_injected_burst_is_flagged_remeasured_and_reported_near_the_quiet_median(tmp_path):
    from bench.harness.faults import NOISE_S

    assert NOISE_S >= 10 * NAP_MS / 1e3  # the burst is what the test says it is
    quiet = nap_run(tmp_path / "quiet", "")
    assert quiet["extra_info"]["remeasured"] is False and quiet["extra_info"]["noisy"] is False
    noisy = nap_run(tmp_path / "noisy", "noise=*nap*")
    info, stats = noisy["extra_info"], noisy["stats"]
    assert info["remeasured"] is True and info["noisy"] is False
    first, again = info["noise"]["measurements"]
    assert "max2_min" in first["failed"] and info["noise"]["kept"] == 1
    # The burst hit the first warm-up call too, yet the median of the warm-up calls set the
    # rounds: calibrated from that call alone, the point would have had 3 (~0.2 s / 0.1 s).
    assert first["rounds"] >= 10 and again["rounds"] >= 10
    # The JSON's stats are the kept measurement's, and its median the quiet one's.
    assert stats["rounds"] == again["rounds"] and stats["median"] == again["median_s"]
    assert stats["median"] == pytest.approx(quiet["stats"]["median"], rel=0.2)
    assert stats["max"] < NOISE_S  # none of the burst's rounds is left in the stats
    assert set(info) >= set(INFO_KEYS)


def test_a_slow_call_gets_fewer_rounds():
    paper = Timing(budget_s=1.0, min_rounds=5, max_rounds=200)
    assert timing.rounds_for(1.9, paper) == 3  # dense_loop at d = 2048: 5 rounds = 10 budgets
    assert timing.rounds_for(0.8, paper) == 3  # 5 rounds would take 4 budgets, 3 fit
    assert timing.rounds_for(0.6, paper) == 5  # 5 rounds fit in 3 budgets
    assert timing.rounds_for(0.3, paper) == 5
    assert timing.rounds_for(1.9, Timing(1.0, 5, 200, slow_min_rounds=5)) == 5  # asked for
