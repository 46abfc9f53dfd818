"""pytest plumbing of the hollowbench sweep (``pytest bench``).

Parametrizes each test module's ``WORKLOAD`` (bench/workloads/) with its sharded points, built
once here (the ``point`` fixture hands the test its own), orders the run, hands the sweep's
compile-ahead window the upcoming points' cases, and wires the sweep into pytest-benchmark's
JSON, the journal, the terminal header, progress and the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator

# JAX would otherwise grab 75% of each GPU at import, starving torch points in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from pathlib import Path

import pytest

from bench.harness import ahead, options, plan, presets, telemetry, xla
from bench.harness.case import Case
from bench.harness.journal import Journal, journal_path
from bench.harness.progress import Progress
from bench.harness.sweep import Sweep
from bench.harness.timing import MARK, describe_rule
from results_format.schema import SCHEMA_VERSION, VERSION_KEY

SWEEP = pytest.StashKey[Sweep]()
DEVICES = pytest.StashKey[tuple[dict[str, tuple[str, ...]], dict[str, str]]]()
PROGRESS = pytest.StashKey[Progress]()
POINTS = pytest.StashKey[dict[str, tuple[list[pytest.Item], int]]]()  # nodeid -> (items, index)
BUILT = pytest.StashKey[dict[str, object]]()  # nodeid -> the point, as its workload built it


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def _avoid_xla_cpu_deadlock(settings: options.Settings) -> None:
    """Turn XLA:CPU's concurrency-optimised scheduler off where JAX will run on the CPU
    (bench/harness/xla.py says why). Read when JAX makes its CPU client, which no backend has
    done yet."""
    on_cpu = settings.devices is None or "cpu" in settings.devices
    if "jax" in settings.backends and on_cpu:
        xla.add_flag(xla.CPU_SCHEDULER_OFF)


def pytest_configure(config: pytest.Config) -> None:
    try:
        settings = options.from_config(config)
        if settings.model_factory:  # importable, from here or where pytest was run
            options.load_factory(settings.model_factory, str(config.invocation_params.dir))
    except options.OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    _avoid_xla_cpu_deadlock(settings)
    # Before a backend imports JAX.
    settings = dataclasses.replace(settings, jax_cache=ahead.use_jax_cache(settings.jax_cache))
    json_file = config.getoption("benchmark_json", None)
    path = journal_path(settings.journal, json_file, config.rootpath, config.invocation_params.dir)
    sweep = Sweep(settings, Journal(path, lambda: _machine_info(config)))
    try:
        config.stash[DEVICES] = sweep.discover()
    except options.OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SWEEP] = sweep


def pytest_unconfigure(config: pytest.Config) -> None:
    sweep = config.stash.get(SWEEP, None)
    if sweep is not None:
        sweep.close()


def _machine_info(config: pytest.Config) -> dict:
    """pytest-benchmark's machine_info with our additions: what the JSON will carry."""
    info = config.hook.pytest_benchmark_generate_machine_info(config=config)
    config.hook.pytest_benchmark_update_machine_info(config=config, machine_info=info)
    return info


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize a module's test with its WORKLOAD's points under their parameter names (the
    JSON's ``params``), each point kept by its node id for the ``point`` fixture; a missing
    backend or package, or an empty selection, is a skipped test that says why. Every point
    carries timing.MARK: pytest-benchmark reads the harness's clock."""
    workload = getattr(metafunc.module, "WORKLOAD", None)
    if workload is None or "point" not in metafunc.fixturenames:
        return
    config = metafunc.config
    settings, (devices, missing) = config.stash[SWEEP].settings, config.stash[DEVICES]
    points = presets.shard(workload.points(settings, devices), *settings.shard)
    built = config.stash.setdefault(BUILT, {})
    built |= {f"{metafunc.definition.nodeid}[{p.id}]": p for p in points}
    values = [
        pytest.param(*p.params, id=p.id, marks=[MARK, *([pytest.mark.skip(reason=r)] if r else [])])
        for p in points
        for r in [workload.unavailable(p)]
    ]
    names = workload.point_type.param_names()

    def skipped(name: str, reason: str):
        blank = [None] * len(names)
        return pytest.param(*blank, id=name, marks=pytest.mark.skip(reason=reason))

    values += [skipped(f"{name}-unavailable", why) for name, why in missing.items()]
    if not values:
        values = [skipped("none", f"no {workload.name} points in this selection of options")]
    metafunc.fixturenames.extend(n for n in names if n not in metafunc.fixturenames)
    metafunc.parametrize(names, values)


def _is_point(item: pytest.Item) -> bool:
    """A sweep point: a test run through the ``sweep`` fixture on a parametrized backend and
    device (every workload module, ours or a later one, follows this shape)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "sweep" in getattr(item, "fixturenames", ()) and {"backend", "device"} <= set(params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Other items first, then the points in run order (Sweep.order: planned under
    ``--bench-budget``); points a mark skips (a missing package) last."""
    points = {item.nodeid: item for item in items if _is_point(item)}
    others = [item for item in items if item.nodeid not in points]
    marked = [i for i in points.values() if i.get_closest_marker("skip") is not None]
    sweep = config.stash[SWEEP]
    runnable = [_candidate(sweep, i) for i in points.values() if i not in marked]
    order = sweep.planner.order(runnable)
    items[:] = others + [points[c.id] for c in order] + marked


def _candidate(sweep: Sweep, item: pytest.Item) -> plan.Candidate:
    """The point as the planner sees it; under a budget, whether it is predicted to fit in
    memory (one that will not covers no claim; describing it builds nothing)."""
    point, workload = item.config.stash[BUILT][item.nodeid], item.module.WORKLOAD
    fits = True
    if sweep.settings.sweep_budget_s:
        case = workload.case(sweep, point)
        fits = not sweep.planner.wont_fit(case.backend, case.need_bytes)
    return plan.Candidate(item.nodeid, workload.name, point, item.callspec.params, fits)


def pytest_collection_finish(session: pytest.Session) -> None:
    config, items = session.config, session.items
    points = {item.nodeid: (items, i) for i, item in enumerate(items) if _is_point(item)}
    config.stash[POINTS] = points
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    write = reporter.write_line if reporter is not None else (lambda line: None)
    config.stash[PROGRESS] = Progress(len(points), write)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item):
    config = item.config
    is_point = item.nodeid in config.stash.get(POINTS, {})
    sweep = config.stash[SWEEP]
    if is_point and sweep.window.wants(item.nodeid) and not config.getoption("benchmark_skip"):
        items, index = config.stash[POINTS][item.nodeid]
        sweep.window.compile(_upcoming(sweep, items[index:]))
    yield
    if is_point:
        config.stash[PROGRESS].tick()


def _upcoming(sweep: Sweep, items: list[pytest.Item]) -> Iterator[tuple[str, Callable[[], Case]]]:
    """(fullname, its case) of the points to run from ``items`` on, for the compile-ahead
    window, passing over those a mark skips (a missing package)."""
    built = items[0].config.stash[BUILT] if items else {}
    for item in items:
        if not _is_point(item):
            return
        if item.get_closest_marker("skip") is None:
            case = functools.partial(item.module.WORKLOAD.case, sweep, built[item.nodeid])
            yield item.nodeid, case


def pytest_report_header(config: pytest.Config) -> list[str]:
    sweep = config.stash[SWEEP]
    s, (devices, missing) = sweep.settings, config.stash[DEVICES]
    lines = [
        f"hollowbench: preset {s.preset.name}, shard {s.shard[0]}/{s.shard[1]}, dims "
        f"{','.join(map(str, s.dims))}, batch {','.join(map(str, s.batches))}, "
        f"timeout {s.timeout_s:g}s, matmul precision {s.matmul_precision}, variants "
        f"{','.join(s.variants)}",
        f"hollowbench: shard from {s.shard_source}; JAX steps compiled ahead by "
        f"{s.compile_workers} threads; JAX compilation cache {s.jax_cache or 'off'}",
        f"hollowbench: timing ~{s.timing.budget_s:g}s per point in {s.timing.min_rounds}.."
        f"{s.timing.max_rounds} rounds after warm-up (replaces pytest-benchmark's calibration); "
        + describe_rule(sweep.rule),
        "hollowbench: devices "
        + "; ".join(f"{b}: {', '.join(d) or 'none'}" for b, d in devices.items()),
        f"hollowbench: journal {sweep.journal.path}",
    ]
    lines += [f"hollowbench: {reason}" for reason in missing.values()]
    load, cores = telemetry.load_avg(), os.cpu_count() or 1
    if load and load[0] > 0.5 * cores:
        lines.append(
            f"hollowbench: WARNING load average {load[0]} on {cores} cores: other work is "
            "running, CPU timings will be skewed (torch's OpenMP threads suffer most)"
        )
    if s.preset.limits:
        lines.append("hollowbench: limits " + "; ".join(lim.describe() for lim in s.preset.limits))
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    sweep = terminalreporter.config.stash.get(SWEEP, None)
    if sweep is None or not sweep.counts:
        return
    counts = ", ".join(f"{n} {status}" for status, n in sorted(sweep.counts.items()))
    terminalreporter.write_line(
        f"[hollowbench] {sum(sweep.counts.values())} points: {counts}; "
        f"journal: {sweep.journal.path}"
    )


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["hollowbench"] = telemetry.machine_info()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    sweep = config.stash[SWEEP]
    output_json["hollowbench"] = {
        VERSION_KEY: SCHEMA_VERSION,
        "session": sweep.journal.session,
        "not_run": sweep.not_run,
        "journal": str(Path(sweep.journal.path).resolve()),
        "settings": sweep.settings.describe() | {"noise_rule": dataclasses.asdict(sweep.rule)},
        "command": ["pytest", *config.invocation_params.args],
    }
    if sweep.plan is not None:
        output_json["hollowbench"]["plan"] = sweep.plan.describe()


@pytest.fixture(scope="session")
def sweep(request: pytest.FixtureRequest) -> Sweep:
    return request.config.stash[SWEEP]


@pytest.fixture
def point(request):
    """The point the test's parameters stand for, as its module's WORKLOAD built it."""
    return request.config.stash[BUILT][request.node.nodeid]
