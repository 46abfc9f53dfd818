"""The CNF workload: FFJORD-style continuous normalizing flows whose divergence is exact
(``hollow`` on the HollowNet, ``dense_vectorized``, ``dense_loop``) or a Hutchinson estimate,
trained in both backends (``impls.{torch,jax}_backend.cnf``; dopri5 at rtol = atol = 1e-5,
gradients through the solver's steps, ``impls.cnf.flow_spec`` as the dynamics, float32).

Two kinds of point (``cnf_item``):

- ``iteration``: the timed call is one training iteration, the forward solve plus the backward
  pass into every parameter (the optimizer's update is left out, so every round solves the
  same problem). Its check reads the NFE of that call and times, apart, a log-likelihood
  evaluation of a held-out batch (``loglik_eval_ms``); for Hutchinson it also reruns that
  evaluation with ``SEEDS`` probe seeds (``loglik_std``; ``error`` = its rel_std).
- ``budget`` (paper and full presets): trains for the preset's ``budget_s`` wall seconds (JAX
  compiles first, off the clock; env ``HOLLOWBENCH_CNF_BUDGET_S`` overrides), then records the
  held-out NLL in data space, computed exactly (hollow), in nats and bits/dim, and the spread
  of the method's own log-likelihood estimate across probe seeds. The timed call is the
  held-out batch evaluation, as ``loglik_eval_ms`` of an iteration point.

The grid depends on the preset (``--bench-preset``); ``--bench-backends``, ``-devices``,
``-methods``, ``-batch`` and ``-shard`` apply as everywhere. ``quick`` keeps to a ~45 s
taste on a 2-core CPU: every JAX point pays ~15 s of compilation (diffrax's reverse mode).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.harness import grid
from bench.harness.operators import predict_bytes
from bench.harness.sweep import Sweep, Task
from bench.harness.workload import PointBase, Workload
from bench.schema import WORKLOAD_KEYS
from impls import cnf
from impls.cnf import FlowConfig, flow_spec

DIMS = {"digits": 64, **dict.fromkeys(cnf.TOY_DATASETS, 2)}
RTOL = ATOL = 1e-5
ADJOINT = False  # differentiate through the steps: diffrax's advice, and JAX then counts NFE-B
MODEL_SEED = DATA_SEED = PROBE_SEED = 0
SEEDS = 8  # probe seeds behind the spread of a Hutchinson log-likelihood
EVAL_ROUNDS = 5  # timed held-out evaluations (after one warm-up)
LR = 1e-3
NFE_GUESS = 32  # graphs a backward through the solver keeps: an untrained flow takes 20-32 NFE
CNF_KEYS = WORKLOAD_KEYS["cnf"][1:]  # bench/SCHEMA.md, "CNF keys"


@dataclass(frozen=True)
class CnfPoint(PointBase):
    """One CNF point: ``item`` ("iteration" or "budget") of a flow on ``dataset`` (dimension
    ``d``) whose divergence is ``method`` (``n_probes`` for Hutchinson), on batches of
    ``batch``."""

    backend: str
    device: str
    item: str
    dataset: str
    d: int
    method: str
    n_probes: int | None
    batch: int

    @property
    def id(self) -> str:
        probes = f"-m{self.n_probes}" if self.n_probes is not None else ""
        return (
            f"{self.backend}-{self.device}-{self.item}-{self.dataset}-d{self.d}-"
            f"{self.method}{probes}-b{self.batch}"
        )

    @property
    def config(self) -> FlowConfig:
        return FlowConfig(
            method=self.method, n_probes=self.n_probes or 1, rtol=RTOL, atol=ATOL, adjoint=ADJOINT
        )


# --- the grid per preset ---------------------------------------------------------------------

# Hutch++ at its default budget (FlowConfig.n_matvecs, 3 products) beside Hutchinson's probes
OTHERS = (*cnf.CNF_EXACT, "hutchpp")


@dataclass(frozen=True)
class CnfPreset:
    """A preset's CNF grid: (backends or None for both, item, dataset, method, n_probes) rows,
    and the wall-clock training budget of its budget points."""

    rows: tuple[tuple, ...]
    budget_s: float | None = None


def _methods(methods: tuple[str, ...], probes: tuple[int, ...]) -> list[tuple[str, int | None]]:
    return [("hutchinson", m) for m in probes] * ("hutchinson" in methods) + [
        (method, None) for method in methods if method != "hutchinson"
    ]


def _every(probes: tuple[int, ...], budget_sets: tuple[str, ...]) -> tuple[tuple, ...]:
    """An iteration for every data set and method (Hutch++ at 3 products among them), then
    the budget on ``budget_sets``."""
    methods = ("hutchinson", *OTHERS)
    iterations = [
        (None, "iteration", dataset, method, m)
        for dataset in cnf.DATASETS
        for method, m in _methods(methods, probes)
    ]
    budgets = [
        (None, "budget", dataset, method, m)
        for dataset in budget_sets
        for method, m in _methods(methods, (1,))
    ]
    return (*iterations, *budgets)


PRESETS = {
    # The 2-D moons with hollow, Hutchinson-1 and dense_vectorized, digits (d = 64) with hollow
    # and Hutchinson-1, in torch; JAX, whose every point compiles for ~15 s on a CPU, takes
    # moons with hollow and Hutchinson-1.
    "quick": CnfPreset(
        rows=(
            (None, "iteration", "moons", "hollow", None),
            (None, "iteration", "moons", "hutchinson", 1),
            (("torch",), "iteration", "moons", "dense_vectorized", None),
            (("torch",), "iteration", "digits", "hollow", None),
            (("torch",), "iteration", "digits", "hutchinson", 1),
        )
    ),
    "paper": CnfPreset(_every(probes=(1, 4), budget_sets=("digits",)), budget_s=60.0),
    "full": CnfPreset(_every(probes=(1, 4, 16), budget_sets=cnf.DATASETS), budget_s=300.0),
}


# Optional packages each point needs, besides its backend.
NEEDS = {"torch": ("torchdiffeq",), "jax": ("diffrax", "optax"), "digits": ("sklearn",)}


def unavailable(point: CnfPoint) -> str | None:
    """Why ``point`` cannot run here (a missing optional package), or None."""
    needed = (*NEEDS[point.backend], *NEEDS.get(point.dataset, ()))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"needs {', '.join(missing)}: pip install 'hollowbench[cnf]'"


# --- data, models and the timed tasks --------------------------------------------------------


def _cnf(backend):
    """The backend's cnf module; ImportError (a skipped point) without torchdiffeq/diffrax."""
    return importlib.import_module(f"impls.{backend.name}_backend.cnf")


def load_data(sweep: Sweep, name: str) -> cnf.Dataset:
    return sweep.memo(("cnf-data", name), lambda: cnf.load_dataset(name, seed=DATA_SEED))


def held_out_batch(data: cnf.Dataset, batch: int) -> np.ndarray:
    """The first ``batch`` test rows (cycled when the test set is smaller)."""
    return data.test[np.arange(batch) % len(data.test)]


def _array(backend, rows: np.ndarray, dtype: str):
    return backend.asarray(np.ascontiguousarray(rows, dtype=dtype))


def train_step(backend, net, x, config: FlowConfig) -> tuple[Callable, tuple, Callable]:
    """(fn, args, stats_of): fn(*args) is one forward solve plus backward; ``stats_of`` reads
    the solve's counters (NFE) from its output."""
    flows = _cnf(backend)

    def loss(net, x, rng):
        return flows.nll(net, x, config, **rng)

    args = (net, x, backend.random_opts(PROBE_SEED))
    return backend.grad_step(loss), args, lambda out: out[0][1]


def loglik(backend, config: FlowConfig) -> Callable:
    """``(net, x, rng) -> log p(x)``, the held-out evaluation (no autograd graph)."""
    flows = _cnf(backend)

    def evaluate(net, x, rng):
        with backend.no_grad():
            return flows.log_likelihood(net, x, config, **rng)[0]

    return evaluate


class Evaluation:
    """The held-out batch log-likelihood under ``config``, callable as ``run(seed)`` ->
    (batch,) numpy. It runs ``compiled`` (the harness's step of :func:`loglik`), else compiles
    :func:`loglik` here once (``compile_s``; JAX), reused for every seed."""

    def __init__(self, backend, net, x, config: FlowConfig, compiled: Callable | None = None):
        self.backend, self.compile_s = backend, None
        if compiled is None:
            fn, args = loglik(backend, config), (net, x, backend.random_opts(0))
            compiled, self.compile_s, _ = backend.compile_step(fn, args)
        self._run = lambda seed: compiled(net, x, backend.random_opts(seed))

    def __call__(self, seed: int) -> np.ndarray:
        out = self._run(seed)
        self.backend.sync(out)
        return np.asarray(self.backend.to_numpy(out), dtype=np.float64)

    def time_ms(self, rounds: int = EVAL_ROUNDS) -> float:
        """Median wall ms of one synchronised evaluation, after a warm-up call."""
        self(PROBE_SEED)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            self(PROBE_SEED)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)


def spread(estimates: np.ndarray) -> dict[str, Any]:
    """Log-likelihood estimates (seeds, batch) across probe seeds: ``loglik_std``, the std of
    the batch-mean log-likelihood, ``loglik_std_sample``, the mean per-sample std, and their
    mean; the point's error is the relative std."""
    loglik, std = float(estimates.mean()), float(estimates.mean(1).std(ddof=1))
    return {
        "loglik": loglik,
        "loglik_std": std,
        "loglik_std_sample": float(estimates.std(0, ddof=1).mean()),
        "error": std / abs(loglik),
        "error_kind": "rel_std",
    }


def stats_info(backend, stats: dict) -> dict[str, Any]:
    """A solve's counters, with how the backend knows its NFE ("counted" or "derived")."""

    def plain(value):
        return None if value is None else int(value)

    counters = {key: plain(stats.get(key)) for key in ("nfe_forward", "nfe_backward", "n_steps")}
    return counters | {"nfe_kind": _cnf(backend).NFE_KIND}


def iteration_task(sweep: Sweep, backend, point: CnfPoint) -> Task:
    """One training iteration to time. It measures the iteration's NFE and, apart, the
    held-out evaluation: its time and log-likelihood, for a stochastic trace (Hutchinson,
    Hutch++) its spread across probe seeds (whose relative std is the point's error)."""
    spec = flow_spec(point.d)
    data = load_data(sweep, point.dataset)
    net = backend.build(spec, seed=MODEL_SEED)
    rng = np.random.default_rng(DATA_SEED)
    x = _array(backend, next(cnf.batches(data.train, point.batch, rng)), spec.dtype)
    fn, args, stats_of = train_step(backend, net, x, point.config)

    def measure(out, step) -> dict[str, Any]:
        held_out = _array(backend, held_out_batch(data, point.batch), spec.dtype)
        evaluate = Evaluation(backend, net, held_out, point.config)
        found = stats_info(backend, stats_of(out)) | {
            "loglik_compile_s": evaluate.compile_s,
            "loglik_eval_ms": evaluate.time_ms(),
        }
        if point.method not in cnf.STOCHASTIC_TRACES:
            return found | {"loglik": float(evaluate(PROBE_SEED).mean())}
        return found | spread(np.stack([evaluate(seed) for seed in range(SEEDS)]))

    return Task(fn, args, measure=measure)


def budget_s() -> float | None:
    raw = os.environ.get("HOLLOWBENCH_CNF_BUDGET_S")
    return float(raw) if raw else None


def budget_task(sweep: Sweep, backend, point: CnfPoint, seconds: float) -> Task:
    """Train for ``seconds`` (the training's outcome is the task's info), then time the
    held-out batch evaluation. It measures that evaluation's time, the exact held-out NLL and,
    for a stochastic trace, the spread of the method's estimate (its relative std: the error)."""
    flows = _cnf(backend)
    spec = flow_spec(point.d)
    data = load_data(sweep, point.dataset)
    result = flows.train(
        backend.build(spec, seed=MODEL_SEED), data.train, point.config, budget_s=seconds,
        batch=point.batch, lr=LR, seed=DATA_SEED,
    )  # fmt: skip
    net = result.field
    trained = {
        "budget_s": seconds,
        "train_iterations": result.iterations,
        "train_iter_ms": 1e3 * result.seconds / max(result.iterations, 1),
        "train_loss": result.losses[-1] if result.losses else None,
        "nfe_forward": result.nfe_forward[-1] if result.nfe_forward else None,
        "nfe_backward": result.nfe_backward[-1] if result.nfe_backward else None,
        "nfe_kind": flows.NFE_KIND,
    }
    held_out = _array(backend, held_out_batch(data, point.batch), spec.dtype)
    # the harness compiles the evaluation (compile_s) and times it
    fn, args = loglik(backend, point.config), (net, held_out, backend.random_opts(PROBE_SEED))

    def estimate(config: FlowConfig, seed: int = 0) -> np.ndarray:
        return flows.held_out_log_likelihood(net, data.test, config, seed=seed, batch=point.batch)

    def measure(out, step) -> dict[str, Any]:
        timed = Evaluation(backend, net, held_out, point.config, compiled=step)
        found = {"loglik_eval_ms": timed.time_ms()}
        found |= data.nll(estimate(FlowConfig(method="hollow", rtol=RTOL, atol=ATOL)))
        if point.method not in cnf.STOCHASTIC_TRACES:
            return found | {"nll_estimate_nats": found["nll_nats"]}
        estimates = np.stack([estimate(point.config, seed) for seed in range(SEEDS)])
        nll = float(-(estimates + data.test_log_det).mean())  # (seeds, n_test) estimates
        return found | {"nll_estimate_nats": nll} | spread(estimates)

    return Task(fn, args, info=trained, measure=measure)


def need_bytes(point: CnfPoint) -> int:
    """A rough guard against hopeless points: the divergence workload's training-step
    estimate (bench/harness/operators.py) times the evaluations a backward keeps."""
    spec = flow_spec(point.d)
    probe = grid.Point(
        "divergence", point.backend, point.device, point.method, "hollownet", point.d,
        point.batch, 1, "train", point.n_probes,
        n_matvecs=point.config.probe_opts.get("n_matvecs"),  # Hutch++'s budget
    )  # fmt: skip
    return NFE_GUESS * predict_bytes(spec, probe)


def describe(point: CnfPoint, preset: CnfPreset) -> dict[str, Any]:
    """The point's identity in extra_info: SCHEMA.md's keys plus the CNF ones."""
    spec, config = flow_spec(point.d), point.config
    return dict.fromkeys(CNF_KEYS) | {
        "workload": "cnf",
        "method": point.method,
        "model": "hollownet",
        "d": point.d,
        "batch": point.batch,
        "k": 1,
        "n_probes": point.n_probes,
        "mode": "train",
        "dtype": spec.dtype,
        "n_params": spec.n_params,
        "flops": spec.flops,
        "model_spec": {"type": "HollowSpec", **asdict(spec)},
        "cnf_item": point.item,
        "dataset": point.dataset,
        "solver": config.solver,
        "rtol": config.rtol,
        "atol": config.atol,
        "t1": config.t1,
        "adjoint": config.adjoint,
        "budget_s": (budget_s() or preset.budget_s) if point.item == "budget" else None,
    }


class CnfWorkload(Workload):
    name, point_type, presets = "cnf", CnfPoint, PRESETS

    def rows(self, settings, backend: str) -> list[tuple]:
        return [
            (item, dataset, DIMS[dataset], method, m, batch)
            for only, item, dataset, method, m in self.preset(settings).rows
            if (only is None or backend in only) and method in settings.methods
            for batch in settings.batches
        ]

    unavailable = staticmethod(unavailable)

    def run(self, sweep: Sweep, benchmark, point: CnfPoint) -> None:
        backend = sweep.backend(point.backend, point.device)
        info = describe(point, self.preset(sweep.settings))
        benchmark.group = f"cnf {point.item} {point.dataset} d={point.d} b={point.batch}"

        def make_task() -> Task:
            if point.item == "iteration":
                return iteration_task(sweep, backend, point)
            return budget_task(sweep, backend, point, info["budget_s"])

        sweep.run(benchmark, backend, make_task, info, need_bytes=need_bytes(point))


WORKLOAD = CnfWorkload()


def test_cnf(sweep, benchmark, point):
    WORKLOAD.run(sweep, benchmark, point)
