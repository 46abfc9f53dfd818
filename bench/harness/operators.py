"""The operator workloads, divergence and D_dim^k, as the harness times them.

eval: the operator alone (torch under ``no_grad``). train, the *fair* step (``STEP``): f and the
operator's values from one pass (``value_and_divergence`` / ``value_and_ddim``), the loss
``mean(f^2) + sum(values)/batch`` (the mean divergence, or the mean of D_dim^k summed over
dimensions), then the backward pass into every parameter (torch: grads set to None first, each
call; JAX: ``value_and_grad``, jitted). No method calls ``net(x)`` a second time for the loss.

Error figures are computed on the first ``ROWS`` rows of the batch against a float64 dense
reference (``dense_vectorized`` on a float64 copy of the very same float32 weights, computed
once per model and shared by every method, mode and backend): max |error| for exact methods,
and for Hutchinson the std across ``SEEDS`` probe seeds over the mean |exact value| (rel_std).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from bench.harness.grid import Point
from bench.harness.sweep import Sweep, Task
from bench.harness.variants import torch_variant
from impls import HollowSpec, MLPSpec, flop_matched_mlp, param_matched_mlp

ModelSpec = HollowSpec | MLPSpec
ROWS = 4  # batch rows the error is checked on
SEEDS = 16  # probe seeds behind Hutchinson's rel_std
REFERENCE_CHUNK = 64  # directions per vmap chunk of the dense reference: bounds its memory
MODEL_SEED = DATA_SEED = 0
# extra_info["step"] of a train point: f and the operator from one pass. Files written before
# this field read as "separate_forward" (the loss's f from a second net(x)).
STEP = "value_and"


def model_spec(model: str, d: int) -> ModelSpec:
    """The HollowNet at dimension d (package defaults), or an MLP matched to it."""
    hollow = HollowSpec(dim=d)
    if model == "hollownet":
        return hollow
    if model == "mlp_param_matched":
        return param_matched_mlp(hollow)
    if model == "mlp_flop_matched":
        return flop_matched_mlp(hollow)
    raise ValueError(f"unknown model {model!r}")


def run_operator(sweep: Sweep, benchmark, point: Point) -> None:
    """Benchmark ``point`` (a divergence or ddim point) through ``sweep.run``."""
    backend = sweep.backend(point.backend, point.device)
    sweep.memo(("warm", backend.name, backend.device), lambda: warm(backend))
    spec = model_spec(point.model, point.d)
    benchmark.group = f"{point.workload} d={point.d} b={point.batch} k={point.k} {point.mode}"
    info = {
        "workload": point.workload,
        "method": point.method,
        "variant": point.variant,
        "model": point.model,
        "d": point.d,
        "batch": point.batch,
        "k": point.k,
        "n_probes": point.n_probes,
        "mode": point.mode,
        "step": STEP if point.mode == "train" else None,
        "dtype": spec.dtype,
        "n_params": spec.n_params,
        "flops": spec.flops,
        "model_spec": {"type": type(spec).__name__, **asdict(spec)},
    }
    sweep.run(
        benchmark,
        backend,
        lambda: make_task(sweep, backend, spec, point),
        info,
        need_bytes=predict_bytes(spec, point),
    )


def warm(backend) -> None:
    """Call every method once on a tiny model, outside any point's time limit.

    torch imports ~800 modules (sympy among them) lazily on the first torch.func call: that
    ~3 s must not count against the first point's limit, and a time-out must not interrupt
    it. JAX imports its transformations up front, and tiny eager calls would only cost
    compilation, so it is left alone.
    """
    if backend.name != "torch":
        return
    import torch

    net = backend.build(HollowSpec(dim=2, d_h=1, cond_hidden=(), trans_hidden=(2,)))
    x = backend.asarray(np.zeros((1, 2), dtype="float32"))
    with torch.no_grad():
        for method in ("hollow", "hollow_forward", "dense_loop", "dense_vectorized"):
            backend.ddim(net, x, k=2, method=method)
        backend.divergence(net, x, method="hutchinson")


def data(batch: int, d: int, dtype: str) -> np.ndarray:
    """The (batch, d) standard-normal input; the same for every backend."""
    return np.random.default_rng(DATA_SEED).standard_normal((batch, d)).astype(dtype)


def make_task(sweep: Sweep, backend, spec: ModelSpec, point: Point) -> Task:
    """Build the model and input of ``point`` and the step the harness times."""
    net = backend.build(spec, seed=MODEL_SEED)
    x_np = data(point.batch, point.d, spec.dtype)
    x = backend.asarray(x_np)
    fn, args, values_of, learned = step(backend, net, x, point)

    def check(out: Any, step: Callable[..., Any]) -> tuple[float, str]:
        if point.method != "hutchinson":
            return max_abs_error(sweep, backend, spec, x_np, point, values_of(out))
        return rel_std(sweep, backend, net, x_np, point, _seeded(backend, net, x, point, step))

    return Task(fn, args, check, info=learned)


def step(backend, net, x, point: Point) -> tuple[Callable, tuple, Callable, dict[str, Any]]:
    """(fn, args, values_of_output, learned): the point's step run as its variant (torch) or
    to be jitted (JAX), how to find the operator's values in its outputs, and what setting
    up the variant learned (extra_info: its ``compile_s``)."""
    if backend.name == "jax":
        return (*_jax_step(backend, net, x, point), {})
    fn, args, values_of = _torch_step(backend, net, x, point)
    fn, learned = torch_variant(fn, args, point.variant)
    return fn, args, values_of, learned


def _seeded(backend, net, x, point: Point, step: Callable) -> Callable[[int], np.ndarray]:
    """seed -> the point's Hutchinson estimate at the first ROWS rows with that seed's probes.

    torch runs the estimator eagerly on those rows; JAX reruns the compiled step (the probe
    key is its last argument), since any new JAX function would cost a fresh compilation.
    """
    if backend.name == "torch":
        import torch

        op, rows = _operator(backend, point), x[:ROWS]

        def estimate(seed: int) -> np.ndarray:
            with torch.no_grad():
                return backend.to_numpy(op(net, rows, seed=seed))

        return estimate

    values_of = _jax_values_of(point)
    return lambda seed: backend.to_numpy(values_of(step(net, x, _key(backend, seed))))[:ROWS]


def _key(backend, seed: int):
    """A PRNG key on the point's device: the compiled step takes its arguments there."""
    import jax

    return jax.device_put(jax.random.key(seed), backend.jax_device)


def _operator(backend, point: Point, with_value: bool = False) -> Callable[..., Any]:
    """op(net, x, **extra) -> the point's values: (batch,) divergence or (batch, d) D_dim^k;
    ``with_value``: (f, values) from one pass."""
    opts = {"n_probes": point.n_probes} if point.method == "hutchinson" else {}
    m = point.method
    if point.workload == "divergence":
        fn = backend.value_and_divergence if with_value else backend.divergence
        return lambda net, x, **kw: fn(net, x, method=m, **opts, **kw)
    fn = backend.value_and_ddim if with_value else backend.ddim
    return lambda net, x, **kw: fn(net, x, k=point.k, method=m, **opts, **kw)


def _torch_step(backend, net, x, point: Point) -> tuple[Callable, tuple, Callable]:
    """(fn, args, values_of_output) for torch; Hutchinson draws probes from the global RNG."""
    import torch

    op = _operator(backend, point)
    if point.mode == "eval":

        def evaluate(net, x):
            with torch.no_grad():
                return op(net, x)

        return evaluate, (net, x), lambda out: out

    value_and_op = _operator(backend, point, with_value=True)

    def train(net, x):
        net.zero_grad(set_to_none=True)
        f, values = value_and_op(net, x)
        loss = f.square().mean() + values.sum() / x.shape[0]
        loss.backward()
        return values.detach()

    return train, (net, x), lambda out: out


def _jax_step(backend, net, x, point: Point) -> tuple[Callable, tuple, Callable]:
    """(fn, args, values_of_output) for JAX. The probe key is an argument, so XLA cannot fold
    the probes into constants."""
    import jax
    import jax.numpy as jnp

    op = _operator(backend, point)
    value_and_op = _operator(backend, point, with_value=True)
    uses_key = point.method == "hutchinson"

    def values(net, x, key):
        return op(net, x, key=key) if uses_key else op(net, x)

    args = (net, x, _key(backend, 0))
    if point.mode == "eval":
        return values, args, _jax_values_of(point)

    def loss(net, x, key):
        f, v = value_and_op(net, x, key=key) if uses_key else value_and_op(net, x)
        return jnp.mean(f**2) + v.sum() / x.shape[0], v

    return jax.value_and_grad(loss, has_aux=True), args, _jax_values_of(point)


def _jax_values_of(point: Point) -> Callable[[Any], Any]:
    """The operator's values in a JAX step's outputs: ``((loss, values), grads)`` in train."""
    return (lambda out: out) if point.mode == "eval" else (lambda out: out[0][1])


def max_abs_error(
    sweep: Sweep, backend, spec: ModelSpec, x_np: np.ndarray, point: Point, values
) -> tuple[float, str]:
    """(max |values - exact| over the first ROWS rows, "max_abs")."""
    exact = _exact(sweep, spec, x_np, point)
    got = backend.to_numpy(values)[:ROWS].astype(np.float64)
    return float(np.abs(got - exact).max()), "max_abs"


def rel_std(
    sweep: Sweep, backend, net, x_np: np.ndarray, point: Point, estimate: Callable[[int], Any]
) -> tuple[float, str]:
    """(std across SEEDS probe seeds, averaged over the first ROWS rows' entries, over the mean
    |exact value|, "rel_std"). A property of the estimator, not of the mode: eval and train
    points of one model, batch and probe count share it."""
    key = ("rel_std", backend.name, backend.device, net.spec, point.workload, point.batch,
           point.n_probes)  # fmt: skip

    def compute() -> float:
        estimates = np.stack([np.asarray(estimate(s), dtype=np.float64) for s in range(SEEDS)])
        exact = _exact(sweep, net.spec, x_np, point)
        return float(estimates.std(0).mean() / np.abs(exact).mean())

    return sweep.memo(key, compute), "rel_std"


def _exact(sweep: Sweep, spec: ModelSpec, x_np: np.ndarray, point: Point) -> np.ndarray:
    """The float64 reference values of ``point`` at the first ROWS rows: (ROWS,) or (ROWS, d).

    Same spec and seed give the same weights in every backend, so one reference per model
    serves all; torch computes it where installed (eagerly: JAX would compile it first).
    """
    key = ("reference", spec, point.batch, point.k)
    ref = sweep.memo(key, lambda: reference(_reference_backend(sweep, point), spec, x_np, point.k))
    return ref.sum(-1) if point.workload == "divergence" else ref


def _reference_backend(sweep: Sweep, point: Point):
    try:
        return sweep.backend("torch", point.device)
    except (ImportError, ValueError):  # torch missing, or it cannot see this device
        return sweep.backend(point.backend, point.device)


def reference(backend, spec: ModelSpec, x_np: np.ndarray, k: int) -> np.ndarray:
    """D_dim^k of the model (spec, MODEL_SEED) at the first ROWS rows of ``x_np``, (ROWS, d)
    float64, by a dense Jacobian in float64 on ``backend``."""
    net64 = float64_copy(backend, backend.build(spec, seed=MODEL_SEED))
    x64 = backend.asarray(x_np[:ROWS].astype(np.float64))
    opts = {"k": k, "method": "dense_vectorized", "chunk_size": REFERENCE_CHUNK}
    if backend.name == "torch":
        import torch

        with torch.no_grad():
            out = backend.ddim(net64, x64, **opts)
    else:
        import jax

        with jax.default_matmul_precision("highest"):
            out = backend.ddim(net64, x64, **opts)
    return backend.to_numpy(out).astype(np.float64)


def float64_copy(backend, net):
    """The same model in float64 with the float32 weights upcast exactly (a float64 build from
    the seed would differ by the float32 rounding of the weights)."""
    spec64 = replace(net.spec, dtype="float64")
    net64 = backend.build(spec64, seed=MODEL_SEED)
    if backend.name == "torch":
        state = {k: v.double() if v.is_floating_point() else v for k, v in net.state_dict().items()}
        net64.load_state_dict(state)
        return net64
    import equinox as eqx
    import jax.numpy as jnp

    params = {k: v.astype(jnp.float64) for k, v in net.params.items()}
    return eqx.tree_at(lambda m: m.params, net64, params)


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
    """A rough estimate of the memory ``point`` needs, to skip points that cannot fit: a guard
    against hopeless points, not a measurement. On the CPU it reads 1-3x XLA's own analysis
    of the JAX points and 1-2x torch's growth of the resident set (HollowNet, d=64-128).

    One forward pass keeps ``A = batch * activations * itemsize``. The hollow methods add
    their k derivative passes, Hutchinson its probes' passes; dense_vectorized pushes d
    directions at once, each with 2^k Taylor components. dense_loop keeps one graph in eval,
    but in train mode each of the d outputs' backward graphs stays alive for the final
    backward. Training doubles the live set otherwise, and triples the parameters (weights,
    gradients, transient copies).
    """
    item = 8 if spec.dtype == "float64" else 4
    act = point.batch * activations(spec) * item
    train = point.mode == "train"
    if point.method == "dense_loop":
        live = point.d * (point.k + 1) * act if train else (point.k + 2) * act
    else:
        if point.method == "dense_vectorized":
            passes = point.d * 2**point.k
        elif point.method == "hutchinson":
            passes = (point.n_probes or 1) + 2
        else:
            passes = point.k + 2
        live = passes * act * (2 if train else 1)
    return spec.n_params * item * (3 if train else 1) + live
