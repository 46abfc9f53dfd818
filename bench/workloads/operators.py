"""The operator workloads, divergence and D_dim^k. eval: the operator alone; train, the *fair*
step (``STEP``): f and the operator from one pass, loss ``mean(f^2) + sum(values)/batch``, and
the backward. Error on ``ROWS`` rows against a float64 dense reference of the same weights:
max |error| (exact methods), or the std across ``SEEDS`` probe seeds over the mean |exact|
(rel_std); ``rel_error``: the timed call's mean |error| over the mean |exact|.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bench.harness.case import Case, NotApplicable, Task
from bench.workloads.base import (
    PointBase,
    Workload,
    attrs,
    backend_module,
    reference_backend,
    spec_info,
)
from impls import (
    DEFAULT_VARIANT,
    EXACT_METHODS,
    FUSED_VARIANTS,
    HOLLOW_METHODS,
    METHODS,
    STOCHASTIC_METHODS,
    VARIANTS,
    HollowSpec,
    MLPSpec,
    flop_matched_mlp,
    param_matched_mlp,
)
from impls.methods import REGISTRY as METHOD_REGISTRY

ModelSpec = HollowSpec | MLPSpec
ROWS = 4  # batch rows the error is checked on
SEEDS = 16  # probe seeds behind Hutchinson's rel_std
REFERENCE_CHUNK = 64  # directions per vmap chunk of the dense reference: bounds its memory
MODEL_SEED = DATA_SEED = 0
# extra_info["step"] of a train point: f and the operator from one pass. Files written before
# this field read as "separate_forward" (the loss's f from a second net(x)).
STEP = "value_and"
# The point's fields its extra_info carries, in their order there.
INFO_FIELDS = ("workload", "method", "variant", "model", "d", "batch", "k", "n_probes", "n_matvecs",
               "mode")  # fmt: skip

# The methods other variants apply to: the exact hollow ones and the estimator they must beat.
VARIANT_METHODS = (*HOLLOW_METHODS, "hutchinson")
# The one point shape the fused variants change: tau's value and tangent, k = 1.
FUSED_METHOD, FUSED_K = "hollow_forward", 1
# Methods whose train step is one ordinary backward (value and tangent carried by hand), the
# only train steps torch.compile takes: AOTAutograd cannot differentiate twice.
COMPILE_TRAIN_METHODS = ("hollow_forward",)

# The pytest parameters of every point, in id order; they also become the JSON's ``params``
# (``spec``: the swept HollowSpec fields' label, None where none is swept).
PARAM_NAMES = (
    "backend", "device", "method", "model", "d", "batch", "k", "mode", "n_probes", "variant",
    "n_matvecs", "spec",
)  # fmt: skip
# The model --bench-model-factory builds (bench/harness/presets.py).
CUSTOM = "custom"
# The t a time-dependent model is evaluated at: the operators differentiate in x at fixed t.
T = 0.5


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
    # HollowSpec fields other than the package defaults (--bench-spec): ((field, value), ...)
    arch: tuple[tuple[str, Any], ...] = ()

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
    def spec(self) -> str | None:
        """The swept fields as ``trans_hidden=64-64,activation=tanh``, or None."""
        return spec_label(self.arch)

    @property
    def id(self) -> str:
        probes = f"-m{self.n_probes}" if self.n_probes is not None else ""
        budget = f"-mv{self.n_matvecs}" if self.n_matvecs is not None else ""
        arch = f"({self.spec})" if self.arch else ""
        return (
            f"{self.backend}-{self.device}-{self.model}{arch}-{self.label}{probes}{budget}"
            f"-d{self.d}-b{self.batch}-k{self.k}-{self.mode}"
        )


def spec_value(value: Any) -> str:
    """A field's value as --bench-spec writes it: 64-64 for a tuple, none for (), else str."""
    if isinstance(value, tuple):
        return "-".join(map(str, value)) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def spec_label(arch: tuple[tuple[str, Any], ...]) -> str | None:
    return ",".join(f"{name}={spec_value(v)}" for name, v in arch) or None


def spec_fields(arch: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """extra_info's own key per swept field, ``spec_<field>`` (a tuple as a list), and the
    label, ``spec`` (None where no field is swept)."""
    fields = {f"spec_{name}": list(v) if isinstance(v, tuple) else v for name, v in arch}
    return {"spec": spec_label(arch), **fields}


@dataclass(frozen=True)
class Grid:
    """What a test module benchmarks: its workload, the methods that apply, and its k values
    (None: take them from ``--bench-k`` / the preset)."""

    workload: str
    methods: tuple[str, ...]
    ks: tuple[int, ...] | None = None


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
    names = [name for name, _ in settings.specs]
    archs = [tuple(zip(names, values, strict=True))
             for values in itertools.product(*(v for _, v in settings.specs))]  # fmt: skip
    # Each model with each architecture; the custom one is the user's own, whatever the specs.
    models = [(m, arch) for m in settings.models for arch in (archs if m != CUSTOM else [()])]
    points = []
    for backend, backend_devices in devices.items():
        mine = [v for v in VARIANTS[backend] if v in variants]
        axes = itertools.product(
            backend_devices, models, wanted, mine, settings.modes,
            sorted(set(settings.dims)), settings.batches, ks,
        )  # fmt: skip
        for device, (model, arch), method, variant, mode, d, batch, k in axes:
            spec = METHOD_REGISTRY[method]
            # Hollow methods need the HollowNet (the custom model's point finds out when built);
            # the baselines take any model.
            hollow_off_hollownet = spec.hollow_only and model not in ("hollownet", CUSTOM)
            if hollow_off_hollownet or not spec.takes_k(k):
                continue
            probes = settings.n_probes if spec.budget == "n_probes" else (None,)
            budgets = settings.n_matvecs if spec.budget == "n_matvecs" else (None,)
            for m, n in itertools.product(probes, budgets):
                p = Point(grid.workload, backend, device, method, model, d, batch, k, mode, m,
                          variant, n, arch)  # fmt: skip
                if variant_applies(p) and not any(limit.excludes(p) for limit in limits):
                    points.append(p)
    return points


class OperatorWorkload(Workload):
    """divergence or ddim: ``methods`` over the grid of the settings' axes (``ks``: the
    workload's own k values, or None for ``--bench-k`` / the preset's)."""

    point_type = Point

    def __init__(self, name: str, methods: tuple[str, ...], ks: tuple[int, ...] | None = None):
        self.name, self.grid = name, Grid(name, methods, ks)

    def points(self, settings, devices: dict[str, tuple[str, ...]]) -> list[Point]:
        return expand(self.grid, settings, devices)

    def unavailable(self, point: Point) -> str | None:
        return variant_unavailable(point)

    def case(self, sweep, point: Point) -> Case:
        backend = sweep.backend(point.backend, point.device)
        info = attrs(point, *INFO_FIELDS) | {"step": STEP if point.mode == "train" else None}
        factory = sweep.settings.model_factory if point.model == CUSTOM else None
        spec = None if factory else model_spec(point.model, point.d, point.arch)
        if spec is None:  # known once built (the task's info): dtype, n_params, the class
            info |= dict.fromkeys(("dtype", "n_params", "flops")) | spec_fields(())
            info |= {"model_spec": {"type": CUSTOM, "factory": factory}}
        else:
            info |= spec_info(spec) | spec_fields(point.arch)
        return Case(
            backend,
            lambda: make_task(sweep, backend, spec, point),
            info | {"model_factory": factory},
            need_bytes=predict_bytes(spec, point) if spec is not None else None,
            group=f"{point.workload} d={point.d} b={point.batch} k={point.k} {point.mode}",
            params=point.param_dict(),
        )


# The divergence sum_i df_i/dx_i: every method, on the HollowNet and its matched MLPs.
DIVERGENCE = OperatorWorkload("divergence", METHODS, ks=(1,))
# D_dim^k f = [d^k f_i / dx_i^k]_i, k from ``--bench-k`` / the preset: the exact methods, and
# XDiag (k = 1) at each matrix-vector budget (Hutchinson's variance: the divergence's).
DDIM = OperatorWorkload("ddim", (*EXACT_METHODS, "xdiag"))


def model_spec(model: str, d: int, arch: tuple[tuple[str, Any], ...] = ()) -> ModelSpec:
    """The HollowNet at dimension d (package defaults, but the fields ``arch`` sets), or an
    MLP matched to it."""
    hollow = HollowSpec(dim=d, **dict(arch))
    if model == "hollownet":
        return hollow
    if model == "mlp_param_matched":
        return param_matched_mlp(hollow)
    if model == "mlp_flop_matched":
        return flop_matched_mlp(hollow)
    raise ValueError(f"unknown model {model!r}")


def data(batch: int, d: int, dtype: str) -> np.ndarray:
    """The (batch, d) standard-normal input; the same for every backend."""
    return np.random.default_rng(DATA_SEED).standard_normal((batch, d)).astype(dtype)


@functools.cache
def factory(text: str) -> Callable[..., Any]:
    """--bench-model-factory's function (checked when the sweep was configured)."""
    from bench.harness.options import load_factory

    return load_factory(text)


def custom_model(backend, text: str, point: Point) -> Any:
    """The user's model of ``point`` (``function(backend_name, dim, seed)``) on its device;
    NotApplicable where the point's method needs a HollowNet it is not."""
    net = backend.place(factory(text)(backend.name, point.d, MODEL_SEED))
    hollow_net = backend_module(backend, "models").HollowNet
    if point.method in HOLLOW_METHODS and not isinstance(net, hollow_net):
        raise NotApplicable(
            f"hollow methods need a HollowNet: {type(net).__name__} has no conditioner and "
            f"transformer (return the {backend.name} backend's build(HollowSpec(...)) to time them)"
        )
    return net


def make_task(sweep, backend, spec: ModelSpec | None, point: Point) -> Task:
    """Build the model and input of ``point`` and the step the harness times (``spec`` None:
    the user's own model, from --bench-model-factory)."""
    info: dict[str, Any] = {}
    if spec is None:
        text = sweep.settings.model_factory
        net = custom_model(backend, text, point)
        n_params, dtype = backend.describe_model(net)
        dtype = dtype or "float32"
        model = {"type": CUSTOM, "factory": text, "class": type(net).__name__}
        info |= {"n_params": n_params, "dtype": dtype, "model_spec": model}
    else:
        net, dtype = backend.build(spec, seed=MODEL_SEED), spec.dtype
    x_np = data(point.batch, point.d, dtype)
    x = backend.asarray(x_np)
    fn, args, values_of = step(backend, net, x, point, time_opts(backend, spec, dtype))
    exact = functools.partial(_exact, sweep, spec, x_np, point, backend, net)

    def check(out: Any, step: Callable[..., Any]) -> tuple[float, str]:
        got = backend.to_numpy(values_of(out))[:ROWS].astype(np.float64)
        info["rel_error"] = float(np.abs(got - exact()).mean() / np.abs(exact()).mean())
        if point.method not in STOCHASTIC_METHODS:
            return float(np.abs(got - exact()).max()), "max_abs"
        return rel_std(sweep, backend, net, x, point, step, values_of, args[2], exact)

    return Task(fn, args, check, info, variant=point.variant)


def time_opts(backend, spec: ModelSpec | None, dtype: str) -> dict[str, Any]:
    """``{"t": T}`` as a 0-d array of the model's dtype for a time-dependent model, else {}."""
    if spec is None or not spec.time_dependent:
        return {}
    return {"t": backend.asarray(np.asarray(T, dtype=dtype))}


def step(
    backend, net, x, point: Point, opts: dict[str, Any] | None = None
) -> tuple[Callable, tuple, Callable]:
    """(fn, args, values_of_output): the point's step and how to find the operator's values in
    its outputs (train: ``((loss, values), grads)``). The probes' seed (JAX: a key) is an
    argument, so XLA cannot fold the probes into constants; so is ``opts`` (a time-dependent
    model's t, :func:`time_opts`)."""
    op = _operator(backend, point)
    rng = backend.random_opts(None) if point.method in STOCHASTIC_METHODS else {}
    args = (net, x, rng | (opts or {}))
    if point.mode == "eval":

        def evaluate(net, x, rng):
            with backend.no_grad():
                return op(net, x, **rng)

        return evaluate, args, lambda out: out

    value_and_op = _operator(backend, point, with_value=True)

    def loss(net, x, rng):  # the fair step: f and the operator from one pass
        f, values = value_and_op(net, x, **rng)
        return (f**2).mean() + values.sum() / x.shape[0], values

    return backend.grad_step(loss), args, lambda out: out[0][1]


def _operator(backend, point: Point, with_value: bool = False) -> Callable[..., Any]:
    """op(net, x, **extra) -> the point's values: (batch,) divergence or (batch, d) D_dim^k;
    ``with_value``: (f, values) from one pass."""
    budget = METHOD_REGISTRY[point.method].budget  # n_probes, n_matvecs or None
    opts = {budget: getattr(point, budget)} if budget else {}
    m = point.method
    if point.workload == "divergence":
        fn = backend.value_and_divergence if with_value else backend.divergence
        return lambda net, x, **kw: fn(net, x, method=m, **opts, **kw)
    fn = backend.value_and_ddim if with_value else backend.ddim
    return lambda net, x, **kw: fn(net, x, k=point.k, method=m, **opts, **kw)


def rel_std(sweep, backend, net, x, point: Point, step, values_of, opts, exact):
    """(std across SEEDS probe seeds of the first ROWS rows over the mean |exact|, "rel_std"). A
    pure compiled step (JAX) reruns with each seed's key; torch runs the estimator eagerly.
    ``opts``: the step's own (t), ``exact``: the reference values."""
    model = getattr(net, "spec", None) or (CUSTOM, sweep.settings.model_factory, point.d)
    key = ("rel_std", backend.name, backend.device, model, point.workload, point.batch,
           point.method, point.n_probes, point.n_matvecs)  # fmt: skip
    op = _operator(backend, point)
    fixed = {name: v for name, v in opts.items() if name == "t"}

    def estimate(seed: int) -> np.ndarray:
        seeded = fixed | backend.random_opts(seed)
        if backend.pure_steps:
            return backend.to_numpy(values_of(step(net, x, seeded)))[:ROWS]
        with backend.no_grad():
            return backend.to_numpy(op(net, x[:ROWS], **seeded))

    def compute() -> float:
        estimates = np.stack([np.asarray(estimate(s), dtype=np.float64) for s in range(SEEDS)])
        return float(estimates.std(0).mean() / np.abs(exact()).mean())

    return sweep.memo(key, compute), "rel_std"


def _exact(sweep, spec: ModelSpec | None, x_np: np.ndarray, point: Point, backend, net):
    """The float64 reference values of ``point`` at the first ROWS rows: (ROWS,) or (ROWS, d).
    Same spec and seed give the same weights in every backend: one reference per model. The
    user's own model (``spec`` None) is cast to float64 on its own backend."""
    t = T if spec is not None and spec.time_dependent else None
    if spec is None:
        key = ("reference", CUSTOM, backend.name, backend.device, point.d, point.batch, point.k)
        ref = sweep.memo(key, lambda: reference_of(backend, net, x_np, point.k))
    else:
        key = ("reference", spec, point.batch, point.k)
        where = reference_backend(sweep, point)
        ref = sweep.memo(key, lambda: reference(where, spec, x_np, point.k, t))
    return ref.sum(-1) if point.workload == "divergence" else ref


def reference(backend, spec: ModelSpec, x_np: np.ndarray, k: int, t=None) -> np.ndarray:
    """D_dim^k of the model (spec, MODEL_SEED) at the first ROWS rows of ``x_np``, (ROWS, d)
    float64, by a dense Jacobian in float64 on ``backend`` (at ``t``, if time-dependent)."""
    return reference_of(backend, backend.build(spec, seed=MODEL_SEED), x_np, k, t)


def reference_of(backend, net, x_np: np.ndarray, k: int, t=None) -> np.ndarray:
    """:func:`reference` of a model built: a copy cast to float64 (a model of the user's own
    that cannot be cast fails here, and its point records no error figure, with the reason)."""
    try:
        net64 = backend.astype(net, "float64")
    except Exception as exc:
        raise TypeError(f"no float64 reference: cannot cast {type(net).__name__} ({exc})") from exc
    x64 = backend.asarray(x_np[:ROWS].astype(np.float64))
    opts = {} if t is None else {"t": t}
    with backend.reference_mode():
        out = backend.ddim(
            net64, x64, k=k, method="dense_vectorized", chunk_size=REFERENCE_CHUNK, **opts
        )
    return backend.to_numpy(out).astype(np.float64)


def activations(spec: ModelSpec) -> int:
    """Values one forward pass keeps per sample: each layer's output, before and after its
    activation (torch's eager autograd keeps both; XLA fuses some away), and its input; the
    conditioner and the transformer run once per dimension."""
    if isinstance(spec, MLPSpec):
        return spec.dim + 2 * (sum(spec.hidden) + spec.dim)
    inputs = 1 + spec.d_h + int(spec.time_dependent)
    per_dim = sum(spec.cond_hidden) + spec.d_h + inputs + sum(spec.trans_hidden) + 1
    return spec.dim * (1 + 2 * per_dim)


def predict_bytes(spec: ModelSpec, point: Point) -> int:
    """Rough bytes ``point`` needs, to skip hopeless points (1-3x XLA's analysis, 1-2x torch's
    RSS growth; CPU, d = 64-128): a pass keeps ``batch * activations * itemsize``, methods keep
    their passes (the registry's ``Method.passes``: dense_vectorized d x 2^k, train-mode
    dense_loop all d backward graphs, training otherwise doubling the live set); training
    triples the parameters."""
    item = 8 if spec.dtype == "float64" else 4
    act = point.batch * activations(spec) * item
    train = point.mode == "train"
    method = METHOD_REGISTRY[point.method]
    budget = getattr(point, method.budget) if method.budget else None
    live = method.passes(point.d, point.k, budget, train) * act
    return spec.n_params * item * (3 if train else 1) + live
