"""The CNF workload: FFJORD-style flows (``impls.{torch,jax}_backend.cnf``; dopri5 at rtol = atol
= 1e-5, float32) whose divergence is exact or a Hutchinson / Hutch++ estimate.

"iteration" times one training iteration, solve and backward (no optimizer update: every round
solves the same problem); "budget" trains for ``budget_s`` (``--bench-cnf-budget-s``
overrides; at most TRAIN_SHARE of the per-point limit, so it cannot time out), times the
held-out evaluation and records the exact held-out NLL. Both record the evaluation's time and a
stochastic trace's spread across ``SEEDS`` probe seeds (the error).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.harness.case import Case, Task
from bench.schema import WORKLOAD_KEYS
from bench.workloads import operators
from bench.workloads.base import PointBase, Workload, attrs, backend_module, spec_info
from impls import cnf
from impls.cnf import FlowConfig, flow_spec

DIMS = {"digits": 64, **dict.fromkeys(cnf.TOY_DATASETS, 2)}
RTOL = ATOL = 1e-5
ADJOINT = False  # differentiate through the steps: diffrax's advice, and JAX then counts NFE-B
MODEL_SEED = DATA_SEED = PROBE_SEED = 0
SEEDS = 8  # probe seeds behind the spread of a Hutchinson log-likelihood
EVAL_ROUNDS = 5  # timed held-out evaluations (after one warm-up)
LR = 1e-3
TRAIN_SHARE = 0.5  # of the per-point limit, a budget point's training at most
NFE_GUESS = 32  # graphs a backward through the solver keeps: an untrained flow takes 20-32 NFE
CNF_KEYS = WORKLOAD_KEYS["cnf"][1:]  # bench/SCHEMA.md, "CNF keys"
NFE_KEYS = ("nfe_forward", "nfe_backward", "n_steps")  # a solve's counters
# Optional packages each point needs, besides its backend.
NEEDS = {"torch": ("torchdiffeq",), "jax": ("diffrax", "optax"), "digits": ("sklearn",)}


@dataclass(frozen=True)
class CnfPoint(PointBase):
    """``item`` ("iteration" or "budget") of a flow on ``dataset`` (dimension ``d``) whose
    divergence is ``method`` (``n_probes`` for Hutchinson), on batches of ``batch``."""

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


@dataclass(frozen=True)
class CnfPreset:
    """A preset's CNF grid: (backends or None for both, item, dataset, method, n_probes) rows,
    and the wall-clock training budget of its budget points."""

    rows: tuple[tuple, ...]
    budget_s: float | None = None


def _every(probes: tuple[int, ...], budget_sets: tuple[str, ...]) -> tuple[tuple, ...]:
    """An iteration for every data set and method (Hutch++ at its default 3 products among
    them), then the budget on ``budget_sets`` (Hutchinson at 1 probe)."""

    def rows(item: str, datasets: tuple[str, ...], probes: tuple[int, ...]) -> list[tuple]:
        methods = [("hutchinson", m) for m in probes]
        methods += [(m, None) for m in (*cnf.CNF_EXACT, "hutchpp")]
        return [(None, item, data, method, m) for data in datasets for method, m in methods]

    return (*rows("iteration", cnf.DATASETS, probes), *rows("budget", budget_sets, (1,)))


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


def _data(sweep, point: CnfPoint) -> cnf.Dataset:
    return sweep.memo(
        ("cnf-data", point.dataset), lambda: cnf.load_dataset(point.dataset, seed=DATA_SEED)
    )


def _array(backend, rows: np.ndarray, dtype: str):
    return backend.asarray(np.ascontiguousarray(rows, dtype=dtype))


def _held_out(backend, data: cnf.Dataset, batch: int, dtype: str):
    """The first ``batch`` test rows (cycled when the test set is smaller), (batch, d)."""
    return _array(backend, data.test[np.arange(batch) % len(data.test)], dtype)


def _loglik(backend, config: FlowConfig) -> Callable:
    """``(net, x, rng) -> log p(x)``, the held-out evaluation (no autograd graph)."""
    flows = backend_module(backend, "cnf")

    def evaluate(net, x, rng):
        with backend.no_grad():
            return flows.log_likelihood(net, x, config, **rng)[0]

    return evaluate


def _evaluation(backend, step: Callable, net, x) -> Callable[[int], np.ndarray]:
    """seed -> log p(x) (batch,) float64 by ``step``, a compiled :func:`_loglik`."""

    def evaluate(seed: int) -> np.ndarray:
        out = step(net, x, backend.random_opts(seed))
        backend.sync(out)
        return np.asarray(backend.to_numpy(out), dtype=np.float64)

    return evaluate


def _time_ms(evaluate: Callable[[int], np.ndarray]) -> float:
    """Median wall ms of one synchronised evaluation, after a warm-up call."""
    evaluate(PROBE_SEED)
    times = []
    for _ in range(EVAL_ROUNDS):
        start = time.perf_counter()
        evaluate(PROBE_SEED)
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


def iteration_task(sweep, backend, point: CnfPoint) -> Task:
    """One training iteration to time (outputs ``((loss, stats), grads)``); it measures its NFE
    and, apart, the held-out evaluation's time and log-likelihood (or its spread)."""
    flows, spec, data = backend_module(backend, "cnf"), flow_spec(point.d), _data(sweep, point)
    net = backend.build(spec, seed=MODEL_SEED)
    rng = np.random.default_rng(DATA_SEED)
    x = _array(backend, next(cnf.batches(data.train, point.batch, rng)), spec.dtype)

    def loss(net, x, rng):
        return flows.nll(net, x, point.config, **rng)

    def measure(out, step) -> dict[str, Any]:
        held_out = _held_out(backend, data, point.batch, spec.dtype)
        args = (net, held_out, backend.random_opts(0))
        compiled, compile_s, _ = backend.compile_step(_loglik(backend, point.config), args)
        evaluate = _evaluation(backend, compiled, net, held_out)
        stats = out[0][1]
        found = {key: None if stats.get(key) is None else int(stats[key]) for key in NFE_KEYS}
        found |= {
            "nfe_kind": flows.NFE_KIND,
            "loglik_compile_s": compile_s,
            "loglik_eval_ms": _time_ms(evaluate),
        }
        if point.method not in cnf.STOCHASTIC_TRACES:
            return found | {"loglik": float(evaluate(PROBE_SEED).mean())}
        return found | spread(np.stack([evaluate(seed) for seed in range(SEEDS)]))

    args = (net, x, backend.random_opts(PROBE_SEED))
    return Task(backend.grad_step(loss), args, measure=measure)


def budget_task(sweep, backend, point: CnfPoint, seconds: float) -> Task:
    """Train for ``seconds`` (its outcome is the task's info), then time the held-out batch
    evaluation; it measures the exact held-out NLL and a stochastic trace's spread."""
    flows, spec, data = backend_module(backend, "cnf"), flow_spec(point.d), _data(sweep, point)
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
    held_out = _held_out(backend, data, point.batch, spec.dtype)

    def estimate(config: FlowConfig, seed: int = 0) -> np.ndarray:
        return flows.held_out_log_likelihood(net, data.test, config, seed=seed, batch=point.batch)

    def measure(out, step) -> dict[str, Any]:
        found = {"loglik_eval_ms": _time_ms(_evaluation(backend, step, net, held_out))}
        found |= data.nll(estimate(FlowConfig(method="hollow", rtol=RTOL, atol=ATOL)))
        if point.method not in cnf.STOCHASTIC_TRACES:
            return found | {"nll_estimate_nats": found["nll_nats"]}
        estimates = np.stack([estimate(point.config, seed) for seed in range(SEEDS)])
        nll = float(-(estimates + data.test_log_det).mean())  # (seeds, n_test) estimates
        return found | {"nll_estimate_nats": nll} | spread(estimates)

    # the harness compiles the evaluation (compile_s) and times it
    args = (net, held_out, backend.random_opts(PROBE_SEED))
    return Task(_loglik(backend, point.config), args, info=trained, measure=measure)


def need_bytes(point: CnfPoint) -> int:
    """A rough guard against hopeless points: the divergence workload's training-step
    estimate (bench/workloads/operators.py) times the evaluations a backward keeps."""
    probe = operators.Point(
        "divergence", point.backend, point.device, point.method, "hollownet", point.d,
        point.batch, 1, "train", point.n_probes,
        n_matvecs=point.config.probe_opts.get("n_matvecs"),  # Hutch++'s budget
    )  # fmt: skip
    return NFE_GUESS * operators.predict_bytes(flow_spec(point.d), probe)


def training_s(settings, preset: CnfPreset) -> float | None:
    """A budget point's training seconds: ``--bench-cnf-budget-s`` or the preset's, at most
    TRAIN_SHARE of the per-point limit (the held-out evaluation needs the rest)."""
    seconds = settings.cnf_budget_s or preset.budget_s
    if seconds is None or not settings.timeout_s:
        return seconds
    return min(seconds, TRAIN_SHARE * settings.timeout_s)


class CnfWorkload(Workload):
    name, point_type, presets = "cnf", CnfPoint, PRESETS

    def rows(self, settings, backend: str) -> list[tuple]:
        return [
            (item, dataset, DIMS[dataset], method, m, batch)
            for only, item, dataset, method, m in self.preset(settings).rows
            if (only is None or backend in only) and method in settings.methods
            for batch in settings.batches
        ]

    def unavailable(self, point: CnfPoint) -> str | None:
        needed = (*NEEDS[point.backend], *NEEDS.get(point.dataset, ()))
        missing = [name for name in needed if importlib.util.find_spec(name) is None]
        return f"needs {', '.join(missing)}: pip install 'hollowbench[cnf]'" if missing else None

    def case(self, sweep, point: CnfPoint) -> Case:
        backend, config = sweep.backend(point.backend, point.device), point.config
        budget = training_s(sweep.settings, self.preset(sweep.settings))
        info = dict.fromkeys(CNF_KEYS) | {
            "workload": "cnf",
            "model": "hollownet",
            "k": 1,
            "mode": "train",
            **attrs(point, "method", "d", "batch", "n_probes"),
            **spec_info(flow_spec(point.d)),
            "cnf_item": point.item,
            "dataset": point.dataset,
            **attrs(config, "solver", "rtol", "atol", "t1", "adjoint"),
            "budget_s": budget if point.item == "budget" else None,
        }

        def make_task() -> Task:
            if point.item == "iteration":
                return iteration_task(sweep, backend, point)
            return budget_task(sweep, backend, point, info["budget_s"])

        group = f"cnf {point.item} {point.dataset} d={point.d} b={point.batch}"
        return Case(backend, make_task, info, need_bytes(point), group, params=point.param_dict())


WORKLOAD = CnfWorkload()
