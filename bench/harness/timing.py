"""Timing you can trust on a busy machine: calibration, the noise test and one re-measurement.

Every point is timed through here (:meth:`Sweep.run <bench.harness.sweep.Sweep.run>`), by our
own clock (:data:`CLOCK`, ``time.perf_counter`` around synchronised calls): the median of a few
warm-up calls sets the rounds (:func:`warm_up`, :func:`rounds_for`); a measurement is noisy
when a robust spread figure passes :data:`RULE`, or when the process's threads waited for cores
that other processes held (other work can make torch's OpenMP threads uniformly 100x slower,
which no spread figure sees; XLA's thread pool, alone on the machine, keeps more threads
runnable than there are cores, which is no noise); a noisy point is timed once more and the
quieter measurement kept (:func:`measure`). The thresholds live in :data:`RULE` only;
:func:`rule_text` words them, and SCHEMA.md, the README and docs/timing.md quote that text.

pytest-benchmark records one measurement per test (``benchmark.pedantic``, once), and which of
ours is kept is known only after both, so the kept one is handed to it afterwards through its
public API (:func:`hand_over`): ``pedantic`` reads the harness's clock (the ``timer`` option of
its ``benchmark`` mark, :data:`MARK`), which gives it the kept rounds' seconds, one round each.
tests/test_pytest_benchmark.py pins every pytest-benchmark behaviour this relies on.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.harness import telemetry
from bench.harness.presets import Timing
from bench.schema import STATS

WARMUP_CALLS = 5  # calibration calls after the first, at most
WARMUP_MIN_CALLS = 3  # ... and at least, unless their time reaches the budget
FAST_FRACTION = 5  # a call shorter than budget / FAST_FRACTION is "fast" ...
FAST_MIN_ROUNDS = 5  # ... and gets at least this many rounds
# A call so slow that min_rounds of it would take over SLOW_BUDGETS budgets gets as many
# rounds as fit in them, but at least Timing.slow_min_rounds (3: enough for a median and an
# IQR): dense_loop at d = 2048 takes ~2 s a call on an H100, 5 rounds of it 10 budgets.
SLOW_BUDGETS = 3
# The re-measurement stops early once it has taken AGAIN_MAX_BUDGETS budgets and 3 rounds: a
# machine that turned slower since the first measurement must not stretch a point tenfold.
AGAIN_MAX_BUDGETS = 3

# A disturbance hook for fault injection: called before every call with the phase ("first",
# "warmup", "timed", "again") and the call's index within that phase.
Disturb = Callable[[str, int], None]


@dataclass(frozen=True)
class NoiseRule:
    """When a measurement is noisy: ``iqr_median`` and ``max2_min`` (the second-largest round
    over the smallest: one slow round in thirty is normal) are ceilings on its spread figures;
    ``cpu_share`` a floor on the process's CPU share over its timed calls, judged only when
    other processes held more than ``others_share`` of the usable cores' time (a None figure is
    not judged; an unknown others' share leaves the CPU share judged alone); ``pause_s`` is the
    pause before the one re-measurement."""

    iqr_median: float = 0.25
    max2_min: float = 4.0
    cpu_share: float = 0.75
    others_share: float = 0.1
    pause_s: float = 0.5

    def limits(self) -> dict[str, float]:
        names = ("iqr_median", "max2_min", "cpu_share", "others_share")
        return {name: getattr(self, name) for name in names}


RULE = NoiseRule()  # THE thresholds (results_format/SCHEMA.md, docs/timing.md)


@dataclass
class Measurement:
    """One timed run of a point: seconds per round, the process's CPU share over it, and the
    share of the usable cores' time that other processes held (telemetry.others_share)."""

    data: list[float]
    cpu_share: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. energy over these rounds
    others_share: float | None = None

    def figures(self) -> dict[str, Any]:
        """rounds, median_s, iqr_median, max2_min, cpu_share, others_share: pytest-benchmark's
        own median and IQR (so they match the JSON's), and the second-largest round over the
        smallest (max over min for a single round)."""
        stats = _stats(self.data)
        median, low = stats.median, stats.min
        second = sorted(self.data)[-2] if len(self.data) > 1 else stats.max
        return {
            "rounds": len(self.data),
            "median_s": median,
            "iqr_median": stats.iqr / median if median > 0 else math.inf,
            "max2_min": second / low if low > 0 else math.inf,
            "cpu_share": self.cpu_share,
            "others_share": self.others_share,
        }


def failures(figures: dict[str, Any], rule: NoiseRule = RULE) -> list[str]:
    """The names of the checks ``figures`` fail: "iqr_median", "max2_min", "cpu_share" (the
    threads waited for cores while other processes held them)."""
    failed = [name for name in ("iqr_median", "max2_min") if figures[name] > getattr(rule, name)]
    share, others = figures.get("cpu_share"), figures.get("others_share")
    waited = share is not None and share < rule.cpu_share
    if waited and (others is None or others > rule.others_share):  # unknown: judged alone
        failed.append("cpu_share")
    return failed


@dataclass
class Outcome:
    """Every measurement of a point, in order, and which one was kept."""

    measurements: list[Measurement]
    kept: int
    rule: NoiseRule

    def info(self) -> dict[str, Any]:
        """The point's ``noise``, ``remeasured`` and ``noisy`` extra_info (SCHEMA.md)."""
        runs = [m.figures() for m in self.measurements]
        runs = [figures | {"failed": failures(figures, self.rule)} for figures in runs]
        kept = runs[self.kept]
        return {
            "noise": {
                **{k: kept[k] for k in (*self.rule.limits(), "failed")},
                "kept": self.kept,
                "measurements": runs,
                "limits": self.rule.limits(),
            },
            "remeasured": len(runs) > 1,
            "noisy": bool(kept["failed"]),
            "cpu_share": kept["cpu_share"],
        }


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def warm_up(
    call: Callable[[], Any], budget_s: float, disturb: Disturb | None = None
) -> tuple[Any, float]:
    """(the last call's output, the call time to calibrate from): the median of up to
    WARMUP_CALLS calls after the first (which pays one-off costs), stopping once
    WARMUP_MIN_CALLS took half the budget or all took all of it; a first call over the whole
    budget is the figure itself."""
    _disturb(disturb, "first", 0)
    out, first = _timed(call)
    if first >= budget_s:
        return out, max(first, 1e-9)
    times: list[float] = []
    while len(times) < WARMUP_CALLS:
        _disturb(disturb, "warmup", len(times))
        out, seconds = _timed(call)
        times.append(seconds)
        spent = sum(times)
        if spent >= budget_s or (len(times) >= WARMUP_MIN_CALLS and spent >= budget_s / 2):
            break
    return out, max(statistics.median(times), 1e-9)


def rounds_for(seconds: float, timing: Timing) -> int:
    """The budget's worth of rounds for a call of ``seconds``, within [min_rounds, max_rounds];
    at least FAST_MIN_ROUNDS for a fast call; what fits in SLOW_BUDGETS budgets for a slow
    one, but at least slow_min_rounds (and one)."""
    rounds = min(max(math.ceil(timing.budget_s / seconds), timing.min_rounds), timing.max_rounds)
    if seconds < timing.budget_s / FAST_FRACTION:
        rounds = max(rounds, FAST_MIN_ROUNDS)
    elif rounds * seconds > SLOW_BUDGETS * timing.budget_s:
        fit = math.floor(SLOW_BUDGETS * timing.budget_s / seconds)
        rounds = min(rounds, max(fit, timing.slow_min_rounds))
    return max(rounds, 1)


def _disturb(disturb: Disturb | None, phase: str, index: int) -> None:
    if disturb is not None:
        disturb(phase, index)


def measure(
    call: Callable[[], Any],
    rounds: int,
    timing: Timing,
    *,
    rule: NoiseRule = RULE,
    disturb: Disturb | None = None,
    probe: Callable[[], AbstractContextManager[dict[str, Any]]] = lambda: nullcontext({}),
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
) -> Outcome:
    """Time ``call`` for ``rounds`` rounds; if noisy, pause, time it once more (recalibrated
    from the first median) and keep the quieter. ``probe()`` wraps each measurement, filling
    ``Measurement.extra`` (energy). No re-measurement that would likely pass ``deadline``
    (perf_counter s): a noisy point beats a time-out."""
    first = _measured(probe, lambda: _time_rounds(call, rounds, disturb, "timed"))
    outcome = Outcome([first], 0, rule)
    if not failures(first.figures(), rule):
        return outcome
    if deadline is not None and time.perf_counter() + rule.pause_s + 2 * sum(first.data) > deadline:
        return outcome
    sleep(rule.pause_s)
    again_rounds = rounds_for(first.figures()["median_s"], timing)
    limit_s = AGAIN_MAX_BUDGETS * timing.budget_s
    second = _measured(probe, lambda: _time_rounds(call, again_rounds, disturb, "again", limit_s))
    outcome.measurements.append(second)
    outcome.kept = quieter(first, second, rule)
    return outcome


def quieter(first: Measurement, second: Measurement, rule: NoiseRule = RULE) -> int:
    """0 or 1: the measurement that passes the noise test; if both or neither do, the one with
    the lower median (load on a machine only ever adds time)."""
    runs = [first.figures(), second.figures()]
    return min((0, 1), key=lambda i: (bool(failures(runs[i], rule)), runs[i]["median_s"]))


def _measured(probe, take: Callable[[], list[float]]) -> Measurement:
    """The seconds per round ``take()`` times, with the CPU share, others' share of the cores
    (over at least telemetry.OTHERS_WINDOW_S before the end) and the probe's figures."""
    with probe() as extra:
        cores, start = telemetry.core_times(), telemetry.cpu_snapshot()
        data = take()
        share = telemetry.cpu_share(start, telemetry.cpu_snapshot())
        end = telemetry.core_times()
    others = telemetry.others_share(telemetry.window_start(cores, end), end)
    return Measurement(data, share, dict(extra), others)


def _time_rounds(
    call, rounds: int, disturb: Disturb | None, phase: str, limit_s: float | None = None
) -> list[float]:
    """``rounds`` calls, each timed alone by :data:`CLOCK` (the disturbance hook's sleep, called
    inside, counts: that is the injected noise); fewer once at least 3 rounds took
    ``limit_s``."""
    data = []
    for index in range(rounds):
        start = CLOCK()
        _disturb(disturb, phase, index)
        call()
        data.append(CLOCK() - start)
        if limit_s is not None and len(data) >= 3 and sum(data) >= limit_s:
            break
    return data


class Clock:
    """The harness's clock: ``time.perf_counter``, except while :func:`hand_over` has it read
    out a measurement taken before (each round's start, 0.0, then its seconds)."""

    __name__ = "hollowbench_clock"  # what pytest-benchmark's JSON names its timer

    def __init__(self):
        self._readings: list[float] | None = None

    def __call__(self) -> float:
        if self._readings is None:
            return time.perf_counter()
        if not self._readings:
            raise RuntimeError("pytest-benchmark read the clock more than twice a round")
        return self._readings.pop()

    def __repr__(self) -> str:
        return self.__name__


CLOCK = Clock()
# On every sweep point (conftest adds it): pytest-benchmark's documented per-test option
# ``timer``, so that ``benchmark.pedantic`` reads CLOCK.
MARK = pytest.mark.benchmark(timer=CLOCK)


def hand_over(benchmark, data: list[float]) -> None:
    """Give pytest-benchmark the kept measurement, ``data`` (seconds per round), through its
    public API: ``benchmark.pedantic(rounds=len(data), iterations=1)`` of a call already
    timed, whose clock (the test's ``timer``, :data:`MARK`) reads each round's seconds. Raises
    if pytest-benchmark did not read the clock exactly twice a round (no MARK on the test, or
    a release that times otherwise): its stats would not be ours."""
    readings = [value for seconds in data for value in (0.0, seconds)]
    CLOCK._readings = readings[::-1]
    try:
        benchmark.pedantic(_timed_before, rounds=len(data), iterations=1, warmup_rounds=0)
        left = len(CLOCK._readings)
    finally:
        CLOCK._readings = None
    if left:
        raise RuntimeError(
            f"pytest-benchmark read the harness's clock {len(readings) - left} times for "
            f"{len(data)} rounds, not twice a round: mark the test with "
            "bench.harness.timing.MARK (its benchmark timer)"
        )


def _timed_before() -> None:
    """The call :func:`hand_over` gives ``pedantic``: the rounds were timed already."""


def summary(data: list[float]) -> dict[str, Any]:
    """The journal's ``stats`` of a measurement: pytest-benchmark's figures of ``data``
    (seconds per round, one call each), as its JSON has them."""
    stats = _stats(data)
    return {key: getattr(stats, key) for key in (*STATS, "rounds", "ops")} | {"iterations": 1}


def _stats(data: list[float]):
    """pytest-benchmark's Stats of ``data`` (seconds per round)."""
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for seconds in data:
        stats.update(seconds)
    return stats


def rule_text(rule: NoiseRule = RULE) -> str:
    """The rule as results_format/SCHEMA.md, the README and docs/timing.md quote it, word for
    word."""
    return (
        f"A measurement is noisy when `iqr_median` > {rule.iqr_median:g}, when `max2_min` > "
        f"{rule.max2_min:g}, or when `cpu_share` < {rule.cpu_share:g} while `others_share` > "
        f"{rule.others_share:g}."
    )


def describe_rule(rule: NoiseRule = RULE) -> str:
    """The rule in words, for the session header."""
    return (
        f"noisy when IQR/median > {rule.iqr_median:g}, 2nd-largest/min > {rule.max2_min:g}, or "
        f"CPU share < {rule.cpu_share:g} while other processes held > {rule.others_share:g} of "
        f"the cores; re-measured once after {rule.pause_s:g} s"
    )
