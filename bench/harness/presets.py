"""The sweep's presets (quick, paper, full): the axes' defaults, the limits that bound them,
how long each point is timed and its time limit; and sharding.

No torch or JAX here, so options can be checked and shards planned before either is imported.
A workload's own grid lives with it (bench/workloads/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# impls itself imports numpy only
from impls import DENSE_METHODS, ESTIMATORS, VARIANTS
from results_format.schema import PAPER_DIMS

# The axes the options take (bench/harness/options.py).
MODELS = ("hollownet", "mlp_param_matched", "mlp_flop_matched")
# The model --bench-model-factory builds, added to MODELS' where given.
CUSTOM = "custom"
MODES = ("eval", "train")
ALL_VARIANTS = tuple(v for variants in VARIANTS.values() for v in variants)


@dataclass(frozen=True)
class Limit:
    """Points (of any workload) that ``applies`` to run only at ``min_d <= d <= max_d``
    (``max_d=0``: never): presets keep a sweep's cost in check (a dense Jacobian costs d
    passes)."""

    label: str
    applies: Callable[[Any], bool]
    max_d: int
    min_d: int = 1

    def excludes(self, p) -> bool:
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


def _is(field: str, *values: str) -> Callable[[Any], bool]:
    """A limit's test: the point's ``field`` is one of ``values``."""
    return lambda p: getattr(p, field, None) in values


_dense = _is("method", *DENSE_METHODS)
_estimator = _is("method", *ESTIMATORS)
_mlp = _is("model", "mlp_param_matched", "mlp_flop_matched")
_train = _is("mode", "train")
_ddim = _is("workload", "ddim")
_compiled = _is("variant", "compile")


def _many_probes(p) -> bool:
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
        dims=PAPER_DIMS,
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


def shard(points: list, index: int, count: int) -> list:
    """Shard ``index`` (1-based) of ``count``: every count-th point in id order, so shards are
    disjoint, cover the grid, and mix cheap and costly points alike. Order is preserved."""
    ranked = sorted(points, key=lambda p: p.id)
    mine = {p.id for p in ranked[index - 1 :: count]}
    return [p for p in points if p.id in mine]
