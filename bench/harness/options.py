"""The ``--bench-*`` options, their environment variables, and the settings they resolve to.

Command line, then environment variable, then the preset. A bad value raises
:class:`OptionError` naming the option and what it accepts. No torch or JAX imports here.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bench.harness import faults
from bench.harness.faults import Faults
from bench.harness.presets import ALL_VARIANTS, CUSTOM, MODELS, MODES, PRESETS, Preset, Timing
from impls import BACKENDS, MAX_K, METHODS, VARIANTS
from impls.spec import ACTIVATIONS, CONDITIONERS, DTYPES

PRECISIONS = ("default", "tf32", "highest")
INJECT_ENV = "HOLLOWBENCH_INJECT"  # --bench-inject's: the harness's own tests' hook (faults.py)
# JAX's persistent compilation cache, relative to the rootdir (pytest-benchmark's own folder).
JAX_CACHE = ".benchmarks/jax-cache"
# A Slurm job array's task: its id, how many tasks, the lowest id and the step between ids.
SLURM_ARRAY = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
SLURM_STEP = "SLURM_ARRAY_TASK_STEP"


class OptionError(ValueError):
    """A bad option value; the message names the option and what it accepts."""


def attrs(obj, *names: str) -> dict[str, Any]:
    """``{name: obj.<name>}``."""
    return {name: getattr(obj, name) for name in names}


@dataclass(frozen=True)
class Settings:
    """Everything a sweep was asked for. ``devices=None`` means cpu plus every visible GPU;
    ``given``: the options given (command line or environment: their ``dest``), the rest
    took their defaults (the preset's)."""

    preset: Preset
    backends: tuple[str, ...]
    methods: tuple[str, ...]
    models: tuple[str, ...]
    modes: tuple[str, ...]
    dims: tuple[int, ...]
    batches: tuple[int, ...]
    ks: tuple[int, ...]
    n_probes: tuple[int, ...]
    n_matvecs: tuple[int, ...]
    variants: tuple[str, ...]
    devices: tuple[str, ...] | None
    shard: tuple[int, int]
    timing: Timing
    timeout_s: float
    journal: str | None
    matmul_precision: str
    faults: Faults = field(default_factory=Faults)
    shard_source: str = "default"  # "option", or the Slurm array task it came from
    compile_workers: int = 0  # threads compiling JAX steps ahead of time; 0: each in its run
    jax_cache: str | None = None  # JAX's persistent compilation cache directory; None: off
    sweep_budget_s: float = 0.0  # the whole sweep's time budget (bench/harness/plan.py); 0: none
    costs: tuple[str, ...] = ()  # journals (globs) whose points predict costs under a budget
    cnf_budget_s: float | None = None  # a CNF budget point's training time; None: the preset's
    # The operator workloads' HollowSpec fields swept (--bench-spec): (field, its values), in
    # the order given; () where none is.
    specs: tuple[tuple[str, tuple], ...] = ()
    model_factory: str | None = None  # "module:function" building the "custom" model
    given: frozenset[str] = frozenset()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary, recorded in the results next to the machine."""
        axes = ("backends", "methods", "models", "modes", "dims", "batches", "ks", "n_probes")
        return {
            "preset": self.preset.name,
            **{name: list(getattr(self, name)) for name in (*axes, "n_matvecs", "variants")},
            "devices": list(self.devices) if self.devices else None,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
            **attrs(self, "shard_source", "compile_workers", "jax_cache", "sweep_budget_s"),
            "costs": list(self.costs),
            "cnf_budget_s": self.cnf_budget_s,
            "spec": {name: [_jsonable(v) for v in values] for name, values in self.specs},
            "model_factory": self.model_factory,
            "limits": [limit.describe() for limit in self.preset.limits],
            **attrs(self.timing, "budget_s", "min_rounds", "max_rounds"),
            **attrs(self, "timeout_s", "matmul_precision"),
        }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# --- value parsers: each takes the raw string and raises ValueError with a short reason -------


def _words(raw: str) -> list[str]:
    words = [w.strip() for w in raw.split(",") if w.strip()]
    if not words:
        raise ValueError("empty list")
    return list(dict.fromkeys(words))


def choices(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(raw: str) -> tuple[str, ...]:
        words = _words(raw)
        if words == ["all"]:
            return allowed
        bad = [w for w in words if w not in allowed]
        if bad:
            raise ValueError(
                f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}"
            )
        return tuple(words)

    return parse


def ints(lo: int = 1, hi: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated ints and inclusive ranges, e.g. ``8,32,128`` or ``1-3``."""

    def one(word: str) -> list[int]:
        first, _, last = word.partition("-")
        try:
            a, b = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"{word!r} is not an integer or a range like 1-3") from None
        if a > b:
            raise ValueError(f"range {word!r} is empty")
        if a < lo or (hi is not None and b > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{word!r} is out of range; values must be {bound}")
        return list(range(a, b + 1))

    def parse(raw: str) -> tuple[int, ...]:
        return tuple(dict.fromkeys(v for w in _words(raw) for v in one(w)))

    return parse


def _devices(raw: str) -> tuple[str, ...] | None:
    words = _words(raw)
    if words == ["all"]:
        return None
    out = []
    for w in words:
        name = "cuda:0" if w in ("cuda", "gpu") else w.replace("gpu:", "cuda:")
        index = name.removeprefix("cuda:")
        if name != "cpu" and not (name.startswith("cuda:") and index.isdigit()):
            raise ValueError(f"{w!r} is not a device; use cpu, cuda, cuda:N or all")
        out.append(name)
    return tuple(dict.fromkeys(out))


def parse_shard(raw: str) -> tuple[int, int]:
    i, sep, n = raw.strip().partition("/")
    if not (sep and i.isdigit() and n.isdigit()) or not 1 <= int(i) <= int(n):
        raise ValueError(f"{raw!r} is not I/N with 1 <= I <= N (shards are numbered from 1)")
    return int(i), int(n)


def _count(raw: str) -> int:
    if not raw.strip().isdigit():
        raise ValueError(f"{raw!r} is not a whole number >= 0")
    return int(raw)


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{raw!r} must be a finite number >= 0 (0 turns the limit off)")
    return value


def _one(allowed: Mapping[str, Any]) -> Callable[[str], Any]:
    """One name of ``allowed`` -> its value."""

    def parse(raw: str) -> Any:
        if raw not in allowed:
            raise ValueError(f"unknown {raw!r}; choose from {', '.join(allowed)}")
        return allowed[raw]

    return parse


def _width(word: str) -> int:
    if not word.isdigit() or int(word) < 1:
        raise ValueError(f"{word!r} is not a positive integer")
    return int(word)


def _widths(word: str) -> tuple[int, ...]:
    """A tuple field's value: widths joined by '-', e.g. 64-64; none (or ()) for no layer."""
    if word.lower() in ("none", "()"):
        return ()
    try:
        return tuple(_width(w) for w in word.split("-"))
    except ValueError:
        raise ValueError(f"{word!r} is not widths like 64-64 (or none, no layer)") from None


def _flag(word: str) -> bool:
    flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if word.lower() not in flags:
        raise ValueError(f"{word!r} is not true or false")
    return flags[word.lower()]


def _named(what: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(word: str) -> str:
        if word not in allowed:
            raise ValueError(f"unknown {what} {word!r}; choose from {', '.join(allowed)}")
        return word

    return parse


# The HollowSpec fields --bench-spec sweeps, each with the parser of one value (dim is
# --bench-dims'). The matched MLPs follow each spec (activation, time_dependent, dtype, costs).
SPEC_FIELDS: dict[str, Callable[[str], Any]] = {
    "d_h": _width,
    "cond_hidden": _widths,
    "trans_hidden": _widths,
    "activation": _named("activation", ACTIVATIONS),
    "conditioner": _named("conditioner", CONDITIONERS),
    "time_dependent": _flag,
    "dtype": _named("dtype", DTYPES),
}


def parse_specs(raw: str) -> tuple[tuple[str, tuple], ...]:
    """``FIELD=V1,V2,...`` clauses separated by ';' -> ((field, values), ...), e.g.
    ``trans_hidden=64-64,128-128;activation=tanh,softplus``."""
    axes: dict[str, tuple] = {}
    for clause in (c.strip() for c in raw.split(";")):
        if not clause:
            continue
        name, sep, values = (part.strip() for part in clause.partition("="))
        if not sep:
            raise ValueError(f"{clause!r} is not FIELD=V1,V2,... (e.g. trans_hidden=64-64,128)")
        if name not in SPEC_FIELDS:
            raise ValueError(f"unknown field {name!r}; choose from {', '.join(SPEC_FIELDS)}")
        if name in axes:
            raise ValueError(f"{name} is given twice; list its values once: {name}=V1,V2")
        try:
            axes[name] = tuple(dict.fromkeys(SPEC_FIELDS[name](w) for w in _words(values)))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if not axes:
        raise ValueError("empty; give FIELD=V1,V2,... (e.g. activation=tanh,softplus)")
    return tuple(axes.items())


def _factory(raw: str) -> str:
    """``module:function``, checked for its form here; imported by :func:`load_factory`."""
    module, sep, function = raw.strip().partition(":")
    parts = [*module.split("."), function]
    if not sep or not all(p.isidentifier() for p in parts):
        raise ValueError(f"{raw!r} is not module:function (e.g. examples.my_model:build)")
    return raw.strip()


def load_factory(text: str, search: str | None = None) -> Callable[..., Any]:
    """The function ``module:function`` names (``search``: a directory tried on sys.path when
    the module is not importable as it is, e.g. where pytest was run); OptionError if not."""
    import importlib
    import sys

    module_name, _, function = text.partition(":")
    flag = f"--bench-model-factory (or $HOLLOWBENCH_MODEL_FACTORY) {text}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if search is None or search in sys.path or exc.name != module_name.split(".")[0]:
            raise OptionError(f"{flag}: cannot import {module_name!r}: {exc}") from None
        sys.path.append(search)
        return load_factory(text)
    except Exception as exc:
        raise OptionError(f"{flag}: importing {module_name!r} failed: {exc!r}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise OptionError(f"{flag}: {module_name} has no function {function!r}")
    return fn


@dataclass(frozen=True)
class Option:
    dest: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "LIST"
    append: bool = False  # repeatable: the values given are joined by ';'

    @property
    def flag(self) -> str:
        return "--bench-" + self.dest.replace("_", "-")

    @property
    def env(self) -> str:
        return "HOLLOWBENCH_" + self.dest.upper()


OPTIONS = (
    Option("preset", _one(PRESETS), f"sweep size: {', '.join(PRESETS)} (default quick)", "NAME"),
    Option("dims", ints(1), "dimensions d, e.g. 8,32,128 (default: the preset's)"),
    Option("backends", choices(BACKENDS), "torch,jax or all (default all installed)"),
    Option("methods", choices(METHODS), f"subset of {','.join(METHODS)} or all"),
    Option(
        "models",
        choices((*MODELS, CUSTOM)),
        f"subset of {','.join(MODELS)},{CUSTOM} or all ({CUSTOM}: --bench-model-factory's model; "
        "default: all)",
    ),
    Option(
        "spec",
        parse_specs,
        "sweep a HollowSpec field of the divergence and ddim models (their matched MLPs follow "
        f"each): FIELD=V1,V2,... for FIELD in {', '.join(SPEC_FIELDS)}; a tuple as 64-64, none "
        "for (); repeat the option for more fields (the environment variable: FIELD=...;FIELD=...)",
        "FIELD=V1,V2",
        append=True,
    ),
    Option(
        "model_factory",
        _factory,
        f"module:function building a model of your own, the '{CUSTOM}' model of the divergence "
        "and ddim workloads: function(backend_name, dim, seed) returns a torch nn.Module or an "
        "equinox module mapping (batch, dim) to (batch, dim)",
        "MODULE:FUNCTION",
    ),
    Option("modes", choices(MODES), "eval,train or all"),
    Option("k", ints(1, MAX_K), f"derivative orders for ddim, e.g. 1-3 (1..{MAX_K})"),
    Option("batch", ints(1), "batch sizes (default: the preset's)"),
    Option("n_probes", ints(1), "Hutchinson probe counts, e.g. 1,4,16"),
    Option("n_matvecs", ints(3), "matrix-vector budgets of hutchpp, xtrace, xdiag, e.g. 3,12,48"),
    Option(
        "variants",
        choices(ALL_VARIANTS),
        f"how steps run: torch {','.join(VARIANTS['torch'])}; JAX {','.join(VARIANTS['jax'])} "
        "(default: the preset's)",
    ),
    Option("devices", _devices, "cpu,cuda:0,... or all (default: cpu + every visible GPU)"),
    Option("shard", parse_shard, "run shard I of N (1-based) of the grid, e.g. 2/4", "I/N"),
    Option("timeout", _seconds, "per-point time limit in seconds, 0 = none", "SECONDS"),
    Option(
        "compile_workers",
        _count,
        "threads compiling upcoming JAX points ahead of time, in windows of 2N points timed "
        "after their compilation (0: each point compiles in its own run; default: usable cores)",
        "N",
    ),
    Option(
        "jax_cache",
        lambda raw: None if raw.strip().lower() in ("off", "none", "0") else raw.strip(),
        f"JAX's persistent compilation cache directory, or off (default {JAX_CACHE} under the "
        "rootdir)",
        "DIR",
    ),
    Option(
        "budget",
        _seconds,
        "the whole sweep's time budget in seconds: the points the paper's claims and goals need "
        "first, at a spread of d, then the rest, as predicted costs fit; 0 = none",
        "SECONDS",
    ),
    Option(
        "costs",
        lambda raw: tuple(_words(raw)),
        "journals (globs) of earlier sweeps whose points predict costs for --bench-budget",
        "GLOBS",
    ),
    Option(
        "cnf_budget_s",
        _seconds,
        "training seconds of a CNF budget point (default: the preset's; at most half the "
        "per-point limit)",
        "SECONDS",
    ),
    Option("journal", str, "JSON-lines journal path (default: beside --benchmark-json)", "PATH"),
    Option(
        "inject",
        faults.parse,
        "faults for the harness's own tests: oom=GLOB,timeout=GLOB,error=GLOB,noise=GLOB,"
        "delay=S (points whose test name matches)",
        "SPEC",
    ),
    Option(
        "matmul_precision",
        _one({name: name for name in PRECISIONS}),
        "float32 matmuls: default (each framework's own: TF32 in JAX on GPUs, full fp32 in "
        "torch), tf32 (TF32 in both) or highest (full fp32 in both)",
        "NAME",
    ),
)


def add_options(parser) -> None:
    """Register every option with pytest (``parser`` is pytest's Parser)."""
    group = parser.getgroup("hollowbench", "hollowbench sweep (each also read from $HOLLOWBENCH_*)")
    for opt in OPTIONS:
        group.addoption(
            opt.flag,
            dest=f"bench_{opt.dest}",
            metavar=opt.metavar,
            help=f"{opt.help} [${opt.env}]",
            **({"action": "append"} if opt.append else {}),
        )


def markdown() -> str:
    """docs/options.md: every option and the presets, from OPTIONS and PRESETS
    (``python -m bench.harness.options > docs/options.md``; tests/test_docs.py keeps them equal)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def numbers(values: tuple) -> str:
        return ", ".join(map(str, values))

    lines = [
        "# Options of `pytest bench`",
        "",
        "Generated from `OPTIONS` and `PRESETS` in `bench/harness/options.py` and",
        "`bench/harness/presets.py` by `python -m bench.harness.options > docs/options.md`;",
        "`tests/test_docs.py` fails when this page and that output differ. What the options",
        "do in a sweep: [running.md](running.md).",
        "",
        "Each option is also read from its environment variable; the command line wins, then the",
        "variable, then the preset. A bad value stops pytest with a message naming the option.",
        "",
        "| option | environment variable | meaning |",
        "|---|---|---|",
        *(f"| `{opt.flag} {opt.metavar}` | `{opt.env}` | {cell(opt.help)} |" for opt in OPTIONS),
        "",
        "pytest-benchmark's `--benchmark-max-time` and `--benchmark-min-rounds` replace the",
        "preset's timing budget and minimum of rounds.",
        "",
        "## Presets",
        "",
        "| preset | d | batch | k | probes | matvecs | variants | timing budget (s), rounds "
        "| per-point limit (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| `{p.name}` | {numbers(p.dims)} | {numbers(p.batches)} | {numbers(p.ks)} "
            f"| {numbers(p.n_probes)} | {numbers(p.n_matvecs)} | {numbers(p.variants)} "
            f"| {p.timing.budget_s:g}, {p.timing.min_rounds}-{p.timing.max_rounds} "
            f"| {p.timeout_s:g} |"
            for p in PRESETS.values()
        ),
        "",
        "Each preset also limits where costly points run (`limits` in `bench/harness/presets.py`:",
        "a dense Jacobian costs d passes); `full` has no limits, so its out-of-memory errors and",
        "time-outs are recorded rather than avoided.",
        "",
        "| preset | points that run only at some d |",
        "|---|---|",
        *(
            f"| `{p.name}` | {cell(limit.describe())} |"
            for p in PRESETS.values()
            for limit in p.limits
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_faults(raw: str | None) -> Faults:
    """``HOLLOWBENCH_INJECT`` -> Faults (``oom=GLOB,timeout=GLOB,error=GLOB,noise=GLOB,delay=S``,
    any subset)."""
    if not raw:
        return Faults()
    values: dict[str, Any] = {}
    for word in _words(raw):
        key, sep, value = word.partition("=")
        if not sep or key not in ("oom", "timeout", "error", "noise", "delay"):
            raise OptionError(
                f"{INJECT_ENV}: {word!r} is not oom=GLOB, timeout=GLOB, error=GLOB, noise=GLOB "
                "or delay=S"
            )
        values[key] = _seconds(value) if key == "delay" else value
    return Faults(**values)


def slurm_shard(environ: Mapping[str, str]) -> tuple[tuple[int, int], str] | None:
    """((I, N), where from) for the Slurm job-array task ``environ`` describes, or None outside
    an array; ids run from _MIN in steps of _STEP (default 1), the lowest running shard 1."""
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    values = {}
    for name in (*SLURM_ARRAY, SLURM_STEP):
        raw = environ.get(name, "1" if name == SLURM_STEP else None)
        if raw is None or not raw.strip().lstrip("-").isdigit():
            got = "unset" if raw is None else repr(raw)
            raise OptionError(
                f"Slurm array sharding: {name} is {got}, not an integer; give --bench-shard I/N "
                "(or $HOLLOWBENCH_SHARD) instead"
            )
        values[name] = int(raw)
    task, count, low, step = values.values()
    index, off_step = divmod(task - low, step) if step > 0 else (-1, 0)
    if count < 1 or off_step or not 0 <= index < count:
        raise OptionError(
            f"Slurm array sharding: task {task} is not one of the {count} ids {low}, {low + step}, "
            f"... (SLURM_ARRAY_TASK_ID, _COUNT, _MIN, _STEP); a list of ids such as 1,5,9 cannot "
            "be mapped to shards: give --bench-shard I/N instead"
        )
    return (index + 1, count), f"slurm array task {task} (ids {low}..{low + step * (count - 1)})"


def usable_cores() -> int:
    """CPU cores this process may run on (a Slurm allocation or taskset narrows them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve(
    raw: dict[str, str | None],
    max_time: float | None = None,
    min_rounds: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from raw option strings (``raw[dest]``; None where not given). ``max_time`` /
    ``min_rounds``: --benchmark-max-time and --benchmark-min-rounds where given (they replace
    the preset's timing); ``environ``: where a Slurm array task is read from (None: nowhere)."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        if raw.get(opt.dest) is None:
            continue
        try:
            values[opt.dest] = opt.parse(raw[opt.dest])
        except ValueError as exc:
            raise OptionError(f"{opt.flag} (or ${opt.env}): {exc}") from None
    preset = values.get("preset", PRESETS["quick"])
    timing = preset.timing
    if max_time is not None:
        timing = replace(timing, budget_s=max_time)
    if min_rounds is not None:  # asked for: slow calls get them too
        timing = replace(
            timing,
            min_rounds=min_rounds,
            max_rounds=max(min_rounds, timing.max_rounds),
            slow_min_rounds=min_rounds,
        )
    shard, shard_source = values.get("shard"), "option"
    if shard is None:
        shard, shard_source = slurm_shard(environ or {}) or ((1, 1), "default")
    factory = values.get("model_factory")
    models = values.get("models", (*MODELS, CUSTOM))
    if factory is None:
        if "models" in values and raw["models"].strip() != "all" and CUSTOM in models:
            raise OptionError(
                f"--bench-models (or $HOLLOWBENCH_MODELS): {CUSTOM} is the model of "
                "--bench-model-factory MODULE:FUNCTION; give that too"
            )
        models = tuple(m for m in models if m != CUSTOM)
    settings = Settings(
        preset=preset,
        backends=values.get("backends", BACKENDS),
        methods=values.get("methods", METHODS),
        models=models,
        modes=values.get("modes", MODES),
        dims=values.get("dims", preset.dims),
        batches=values.get("batch", preset.batches),
        ks=values.get("k", preset.ks),
        n_probes=values.get("n_probes", preset.n_probes),
        n_matvecs=values.get("n_matvecs", preset.n_matvecs),
        variants=values.get("variants", preset.variants),
        devices=values.get("devices"),
        shard=shard,
        shard_source=shard_source,
        compile_workers=values.get("compile_workers", usable_cores()),
        jax_cache=values.get("jax_cache", JAX_CACHE),
        sweep_budget_s=values.get("budget", 0.0),
        costs=values.get("costs", ()),
        cnf_budget_s=values.get("cnf_budget_s"),
        specs=values.get("spec", ()),
        model_factory=factory,
        timing=timing,
        timeout_s=values.get("timeout", preset.timeout_s),
        journal=values.get("journal"),
        matmul_precision=values.get("matmul_precision", "default"),
        faults=values.get("inject", Faults()),
        given=frozenset(values),
    )
    if settings.faults.timeout and not settings.timeout_s:
        raise OptionError(f"{INJECT_ENV}: timeout=... needs a per-point limit (--bench-timeout)")
    return settings


def from_config(config) -> Settings:
    """Settings from pytest's command line, falling back to the environment, then the preset."""
    raw = {opt.dest: _raw(config.getoption(f"bench_{opt.dest}")) or os.environ.get(opt.env) or None
           for opt in OPTIONS}  # fmt: skip
    given = _given(config, ("--benchmark-max-time", "--benchmark-min-rounds"))
    max_time = float(config.getoption("benchmark_max_time")) if given[0] else None
    min_rounds = int(config.getoption("benchmark_min_rounds")) if given[1] else None
    settings = resolve(raw, max_time, min_rounds, os.environ)
    if settings.jax_cache is None:
        return settings
    # The default is the rootdir's; a directory the user names is relative to where pytest runs.
    base = config.rootpath if raw["jax_cache"] is None else config.invocation_params.dir
    return replace(settings, jax_cache=str((base / settings.jax_cache).resolve()))


def _raw(value: str | list[str] | None) -> str | None:
    """An option's string; a repeatable one's values joined by ';'."""
    return ";".join(value) if isinstance(value, list) else value


def _given(config, flags: tuple[str, ...]) -> tuple[bool, ...]:
    """Whether each flag was given at all (ini ``addopts``, ``$PYTEST_ADDOPTS``, command line):
    pytest reports a default and an explicit value alike, and only an explicit one counts."""
    args = [
        *config.getini("addopts"),
        *shlex.split(os.environ.get("PYTEST_ADDOPTS", "")),
        *config.invocation_params.args,
    ]
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in flags:
        parser.add_argument(flag)
    known, _ = parser.parse_known_args(args)
    return tuple(getattr(known, flag.lstrip("-").replace("-", "_")) is not None for flag in flags)


if __name__ == "__main__":
    print(markdown(), end="")
