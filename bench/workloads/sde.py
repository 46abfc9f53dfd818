"""The SDE workload: the Fokker-Planck residual of a drift f and a diagonal diffusion g (both
time-dependent HollowNets) against an Ornstein-Uhlenbeck target, by the hollow route (D_dim f,
D_dim g, D_dim^2 g from the transformer alone) or the dense route (d basis directions), in
``impls.{torch,jax}_backend.sde``. "eval" times the residual (batch,); "train" the mean squared
residual and its backward into both nets. Error: max |r - r_ref| on ROWS rows against the
float64 dense route. ``--bench-methods`` selects routes by their method.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.harness.case import Case, Task
from bench.workloads import base
from bench.workloads.operators import REFERENCE_CHUNK, ROWS, activations
from impls import HollowSpec
from impls.sde import ROUTE_METHODS, ROUTES, ou_process, training_batch

SEEDS = {"drift": 0, "diffusion": 1}
DATA_SEED = 0


@dataclass(frozen=True)
class SdePoint(base.PointBase):
    """The residual (eval) or a training step (train) by ``route`` at dimension ``d``."""

    backend: str
    device: str
    route: str
    d: int
    batch: int
    mode: str

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.device}-{self.route}-d{self.d}-b{self.batch}-{self.mode}"

    @property
    def method(self) -> str:
        return ROUTE_METHODS[self.route]


def model_spec(d: int) -> HollowSpec:
    """The drift's and the diffusion's spec: a small time-dependent HollowNet, so that the dense
    route's d second-order passes stay affordable on a CPU."""
    return HollowSpec(dim=d, d_h=4, cond_hidden=(8,), trans_hidden=(16, 16), time_dependent=True)


@dataclass(frozen=True)
class SdePreset:
    """Dimensions (``--bench-dims`` replaces them), the dense route's largest d in (eval,
    train) mode, batches (None: the harness preset's; ``--bench-batch`` replaces either) and
    the train-mode dimensions (None: all)."""

    dims: tuple[int, ...]
    dense_max_d: tuple[int, int]
    batches: tuple[int, ...] | None = None
    train_dims: tuple[int, ...] | None = None

    def rows(self, settings) -> list[tuple]:
        """(route, d, batch, mode) rows, routes whose method ``--bench-methods`` keeps."""
        own_dims = "dims" not in settings.given
        dims = self.dims if own_dims else settings.dims
        own_batches = self.batches and "batch" not in settings.given
        batches = self.batches if own_batches else settings.batches
        rows = []
        for route, mode, d, batch in itertools.product(
            ROUTES, settings.modes, sorted(dims), batches
        ):
            kept = ROUTE_METHODS[route] in settings.methods
            too_big = route == "dense" and d > self.dense_max_d[mode == "train"]
            thinned = own_dims and mode == "train" and d not in (self.train_dims or dims)
            if kept and not too_big and not thinned:
                rows.append((route, d, batch, mode))
        return rows


PRESETS = {
    # A JAX training step of this workload takes 3-12 s to compile on a 2-core CPU, more than
    # the rest of its point: train mode at d = 8 only, and a smaller batch.
    "quick": SdePreset((2, 8, 32, 128), (128, 32), batches=(16,), train_dims=(8,)),
    "paper": SdePreset((8, 32, 128, 512, 1024, 2048), (1024, 512)),
    "full": SdePreset((2, 8, 32, 128, 256, 512, 1024, 2048, 4096), (4096, 4096)),
}


def make_task(sweep, backend, point: SdePoint) -> Task:
    """The residual or training step to time; its check compares the residual it returns."""
    spec, target = model_spec(point.d), ou_process(point.d)
    sde = base.backend_module(backend, "sde")
    drift, diffusion = (backend.build(spec, seed=seed) for seed in SEEDS.values())
    # t (batch,) uniform over the target's span, x (batch, d) ~ p_t
    t_np, x_np = training_batch(target, point.batch, np.random.default_rng(DATA_SEED))
    t_np, x_np = t_np.astype("float32"), x_np.astype("float32")
    args = (drift, diffusion, backend.asarray(t_np), backend.asarray(x_np))

    def residual(drift, diffusion, t, x):
        return sde.fp_residual(drift, diffusion, target, t, x, route=point.route)

    if point.mode == "eval":

        def fn(*args):
            with backend.no_grad():
                return residual(*args)

        residual_of = lambda out: out  # noqa: E731
    else:  # the mean squared residual, then the backward pass into both nets

        def loss(*args):
            r = residual(*args)
            return (r**2).mean(), r

        fn, residual_of = backend.grad_step(loss, argnums=(0, 1)), lambda out: out[0][1]

    def check(out: Any, step) -> tuple[float, str]:
        ref = sweep.memo(
            ("sde-reference", point.d, point.batch),
            lambda: reference(base.reference_backend(sweep, point), spec, target, t_np, x_np),
        )
        got = backend.to_numpy(residual_of(out))[:ROWS].astype(np.float64)
        return float(np.abs(got - ref).max()), "max_abs"

    return Task(fn, args, check)


def reference(backend, spec: HollowSpec, target, t_np, x_np) -> np.ndarray:
    """The float64 dense-route residual (ROWS,) at the first ROWS rows, from float64 copies of
    the very same float32 weights (same spec and seeds give them in every backend)."""
    drift, diffusion = (
        backend.astype(backend.build(spec, seed=seed), "float64") for seed in SEEDS.values()
    )
    t, x = (backend.asarray(a[:ROWS].astype(np.float64)) for a in (t_np, x_np))
    sde = base.backend_module(backend, "sde")
    r = sde.fp_residual(drift, diffusion, target, t, x, route="dense", chunk_size=REFERENCE_CHUNK)
    return backend.to_numpy(r).astype(np.float64)


def predict_bytes(spec: HollowSpec, point: SdePoint) -> int:
    """A rough upper estimate of the point's memory, to skip hopeless points: per net, the
    hollow route keeps about 6 forward passes' activations, the dense route 4 per basis
    direction (a second-order jet) for all d of them at once; training doubles that."""
    act = point.batch * activations(spec) * 4
    passes = 6 if point.route == "hollow" else 4 * point.d
    train = 2 if point.mode == "train" else 1
    return 2 * (spec.n_params * 4 * (1 + 2 * (train - 1)) + passes * act * train)


class SdeWorkload(base.Workload):
    name, point_type, presets = "sde", SdePoint, PRESETS

    def rows(self, settings, backend: str) -> list[tuple]:
        return self.preset(settings).rows(settings)

    def case(self, sweep, point: SdePoint) -> Case:
        backend = sweep.backend(point.backend, point.device)
        spec, target = model_spec(point.d), ou_process(point.d)
        info = {
            "workload": "sde",
            **base.attrs(point, "method", "route"),
            "model": "hollownet",
            **base.attrs(point, "d", "batch", "mode"),
            "k": 2,  # the highest derivative order the residual takes (D_dim^2 g)
            **base.spec_info(spec, nets=2),  # drift and diffusion
            "target": target.name,
            "t_span": list(target.t_span),
        }
        return Case(
            backend,
            lambda: make_task(sweep, backend, point),
            info,
            need_bytes=predict_bytes(spec, point),
            group=f"sde d={point.d} b={point.batch} {point.mode}",
            params=point.param_dict(),
        )


WORKLOAD = SdeWorkload()
