"""Benchmark points, the grids test modules declare, the presets that bound them, and sharding.

No torch or JAX here, so options can be checked and shards planned before either is imported.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from bench.harness.workload import PointBase

# impls itself imports numpy only
from impls import (
    DEFAULT_VARIANT,
    DENSE_METHODS,
    ESTIMATORS,
    FUSED_VARIANTS,
    HOLLOW_METHODS,
    VARIANTS,
)
from impls.methods import REGISTRY as METHOD_REGISTRY

MODELS = ("hollownet", "mlp_param_matched", "mlp_flop_matched")
MODES = ("eval", "train")
ALL_VARIANTS = tuple(v for variants in VARIANTS.values() for v in variants)
# The methods other variants apply to: the exact hollow ones and the estimator they must beat.
VARIANT_METHODS = (*HOLLOW_METHODS, "hutchinson")
# The one point shape the fused variants change: tau's value and tangent, k = 1.
FUSED_METHOD, FUSED_K = "hollow_forward", 1
# Methods whose train step is one ordinary backward (value and tangent carried by hand), the
# only train steps torch.compile takes: AOTAutograd cannot differentiate twice.
COMPILE_TRAIN_METHODS = ("hollow_forward",)

# The pytest parameters of every point, in id order; they also become the JSON's ``params``.
PARAM_NAMES = (
    "backend", "device", "method", "model", "d", "batch", "k", "mode", "n_probes", "variant",
    "n_matvecs",
)  # fmt: skip


@dataclass(frozen=True)
class Point(PointBase):
    """One benchmark: ``method`` computing ``workload`` (D_dim^k or the divergence) of ``model``
    at dimension ``d`` on a (batch, d) input, alone (eval) or inside a training step (train)."""

    workload: str
    backend: str
    device: str
    method: str
    model: str
    d: int
    batch: int
    k: int
    mode: str
    n_probes: int | None = None
    variant: str = ""  # "": the backend's default
    n_matvecs: int | None = None  # the matrix-vector budget of Hutch++, XTrace, XDiag

    PARAMS: ClassVar[tuple[str, ...]] = PARAM_NAMES

    def __post_init__(self):
        if not self.variant:
            object.__setattr__(self, "variant", DEFAULT_VARIANT.get(self.backend, ""))

    @property
    def label(self) -> str:
        """The method as the results name it: ``hollow``, or ``hollow+cudagraph`` for a
        variant other than the backend's default, so the default's figure stays apart."""
        default = self.variant == DEFAULT_VARIANT.get(self.backend)
        return self.method if default else f"{self.method}+{self.variant}"

    @property
    def id(self) -> str:
        probes = f"-m{self.n_probes}" if self.n_probes is not None else ""
        budget = f"-mv{self.n_matvecs}" if self.n_matvecs is not None else ""
        return (
            f"{self.backend}-{self.device}-{self.model}-{self.label}{probes}{budget}"
            f"-d{self.d}-b{self.batch}-k{self.k}-{self.mode}"
        )


@dataclass(frozen=True)
class Grid:
    """What a test module benchmarks: its workload, the methods that apply, and its k values
    (None: take them from ``--bench-k`` / the preset)."""

    workload: str
    methods: tuple[str, ...]
    ks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Limit:
    """Points that ``applies`` to run only at ``min_d <= d <= max_d`` (``max_d=0``: never):
    presets keep a sweep's cost in check (a dense Jacobian costs d passes)."""

    label: str
    applies: Callable[[Point], bool]
    max_d: int
    min_d: int = 1

    def excludes(self, p: Point) -> bool:
        return not self.min_d <= p.d <= self.max_d and self.applies(p)

    def describe(self) -> str:
        if self.max_d < max(self.min_d, 1):
            return f"{self.label}: never"
        if self.min_d == self.max_d:
            return f"{self.label}: d = {self.max_d}"
        low = f"{self.min_d} <= " if self.min_d > 1 else ""
        return f"{self.label}: {low}d <= {self.max_d}"


@dataclass(frozen=True)
class Timing:
    """How long each point is timed: rounds = budget_s / call time, within the bounds; a very
    slow call down to ``slow_min_rounds`` (bench/harness/timing.py, ``rounds_for``)."""

    budget_s: float
    min_rounds: int
    max_rounds: int
    slow_min_rounds: int = 3


@dataclass(frozen=True)
class Preset:
    name: str
    dims: tuple[int, ...]
    batches: tuple[int, ...]
    ks: tuple[int, ...]
    n_probes: tuple[int, ...]
    n_matvecs: tuple[int, ...]
    limits: tuple[Limit, ...]
    timing: Timing
    timeout_s: float
    variants: tuple[str, ...] = ALL_VARIANTS


def _is(field: str, *values: str) -> Callable[[Point], bool]:
    """A limit's test: the point's ``field`` is one of ``values``."""
    return lambda p: getattr(p, field) in values


_dense = _is("method", *DENSE_METHODS)
_estimator = _is("method", *ESTIMATORS)
_mlp = _is("model", "mlp_param_matched", "mlp_flop_matched")
_train = _is("mode", "train")
_ddim = _is("workload", "ddim")
_compiled = _is("variant", "compile")


def _many_probes(p: Point) -> bool:
    return (p.n_probes or 1) > 1


PRESETS = {
    # A 2-core CPU in <= 5 minutes: every method, model, mode and k, thinned where costs explode.
    "quick": Preset(
        name="quick",
        dims=(8, 32, 128, 512),
        batches=(32,),
        ks=(1, 2, 3),
        n_probes=(1, 8),
        n_matvecs=(12,),
        limits=(
            Limit("dense methods", _dense, 128),
            Limit("dense methods in train mode", lambda p: _dense(p) and _train(p), 32),
            Limit("matched MLPs", _mlp, 128, min_d=128),
            Limit("matched MLPs in train mode", lambda p: _mlp(p) and _train(p), 0),
            Limit(
                "hutchinson, >1 probe, off HollowNet eval",
                lambda p: _many_probes(p) and (_mlp(p) or _train(p)),
                0,
            ),
            Limit("ddim", _ddim, 32),
            Limit("ddim in train mode", lambda p: _ddim(p) and _train(p), 0),
            Limit("ddim, dense methods", lambda p: _ddim(p) and _dense(p), 8),
            # torch.compile spends 15-60 s compiling each point on a 2-core CPU: a few points.
            Limit("torch.compile", _compiled, 512, min_d=128),
            Limit(
                "torch.compile: >1 probe, or the param-matched MLP",
                lambda p: _compiled(p) and (_many_probes(p) or p.model == "mlp_param_matched"),
                0,
            ),
            # A handful: each estimator's divergence in a HollowNet training step at d = 32.
            Limit(
                "estimators off HollowNet divergence train",
                lambda p: _estimator(p) and (_mlp(p) or _ddim(p) or not _train(p)),
                0,
            ),
            Limit("estimators", _estimator, 32, min_d=32),
        ),
        timing=Timing(budget_s=0.2, min_rounds=3, max_rounds=30),
        timeout_s=120.0,  # a compiled point's compilation counts against it
        # cudagraph is GPU-only.
        variants=("eager", "cudagraph", "compile", "jit"),
    ),
    # The paper's comparison on a GPU: batch 512 up to d = 4096; dense methods where they fit.
    "paper": Preset(
        name="paper",
        dims=(8, 32, 128, 512, 1024, 2048, 4096),
        batches=(512,),
        ks=(1, 2, 3, 4),
        n_probes=(1, 4, 16),
        n_matvecs=(3, 12, 48),
        limits=(
            Limit("dense methods", _dense, 2048),
            Limit("dense methods in train mode", lambda p: _dense(p) and _train(p), 1024),
            Limit("ddim, dense methods", lambda p: _ddim(p) and _dense(p), 512),
            Limit("ddim on matched MLPs", lambda p: _ddim(p) and _mlp(p), 0),
            Limit(
                "hutchinson, >1 probe, in train mode", lambda p: _many_probes(p) and _train(p), 0
            ),
            # Against the exact operator at equal cost: HollowNet training steps up to d = 1024.
            Limit("estimators on matched MLPs", lambda p: _estimator(p) and _mlp(p), 0),
            Limit("estimators in eval mode", lambda p: _estimator(p) and not _train(p), 0),
            Limit("estimators", _estimator, 1024),
        ),
        timing=Timing(budget_s=1.0, min_rounds=5, max_rounds=200),
        timeout_s=300.0,
    ),
    # Everything; OOMs and time-outs are recorded, not avoided.
    "full": Preset(
        name="full",
        dims=(2, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096),
        batches=(64, 512),
        ks=(1, 2, 3, 4),
        n_probes=(1, 2, 4, 8, 16, 32),
        n_matvecs=(3, 6, 12, 24, 48, 96),
        limits=(),
        timing=Timing(budget_s=1.0, min_rounds=5, max_rounds=1000),
        timeout_s=600.0,
    ),
}


def variant_applies(p: Point) -> bool:
    """Whether ``p.variant`` can run ``p`` at all (see VARIANTS): these are not limits to
    lift, so such points are never generated."""
    if p.variant == DEFAULT_VARIANT[p.backend]:
        return True
    if p.variant in FUSED_VARIANTS:
        return p.method == FUSED_METHOD and p.k == FUSED_K
    if p.method not in VARIANT_METHODS:
        return False
    if p.variant == "cudagraph":
        return p.device.startswith("cuda")
    return p.mode == "eval" or p.method in COMPILE_TRAIN_METHODS  # compile


def variant_unavailable(p: Point) -> str | None:
    """Why ``p``'s variant cannot run it on this machine (a fused kernel off a GPU, a kernel
    package missing), or None: such points are generated and skipped with the reason."""
    if p.variant not in FUSED_VARIANTS:
        return None
    if not p.device.startswith("cuda"):
        return f"the {p.variant} variant needs a GPU; the interpreter is for tests"
    if p.variant == "triton" and importlib.util.find_spec("triton") is None:
        return "the triton variant needs the triton package (the kernels extra)"
    return None


def expand(grid: Grid, settings, devices: dict[str, tuple[str, ...]]) -> list[Point]:
    """Every point of ``grid`` on the axes of ``settings`` (``devices``: backend -> devices), in
    a stable order, but those a limit excludes or a variant cannot run. Each method (the
    registry's record, impls.methods) takes the k of its range and the values of its budget's
    axis: Hutchinson each ``n_probes``, the other estimators each ``n_matvecs``."""
    limits, variants = tuple(settings.preset.limits), set(settings.variants)
    wanted = [m for m in grid.methods if m in set(settings.methods)]
    ks = grid.ks if grid.ks is not None else tuple(settings.ks)
    points = []
    for backend, backend_devices in devices.items():
        mine = [v for v in VARIANTS[backend] if v in variants]
        axes = itertools.product(
            backend_devices, settings.models, wanted, mine, settings.modes,
            sorted(set(settings.dims)), settings.batches, ks,
        )  # fmt: skip
        for device, model, method, variant, mode, d, batch, k in axes:
            spec = METHOD_REGISTRY[method]
            # Hollow methods need the HollowNet; the baselines take any model.
            if (spec.hollow_only and model != "hollownet") or not spec.takes_k(k):
                continue
            probes = settings.n_probes if spec.budget == "n_probes" else (None,)
            budgets = settings.n_matvecs if spec.budget == "n_matvecs" else (None,)
            for m, n in itertools.product(probes, budgets):
                p = Point(
                    grid.workload, backend, device, method, model, d, batch, k, mode, m, variant, n
                )
                if variant_applies(p) and not any(limit.excludes(p) for limit in limits):
                    points.append(p)
    return points


def shard(points: list, index: int, count: int) -> list:
    """Shard ``index`` (1-based) of ``count``: every count-th point in id order, so shards are
    disjoint, cover the grid, and mix cheap and costly points alike. Order is preserved."""
    ranked = sorted(points, key=lambda p: p.id)
    mine = {p.id for p in ranked[index - 1 :: count]}
    return [p for p in points if p.id in mine]
