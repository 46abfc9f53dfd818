"""Framework-free model specifications, the numpy initialiser and the code both backends'
models share: the same spec and seed give bit-identical float64 weights in PyTorch and JAX,
laid out for ``y = x @ W + b`` and named as in :func:`param_shapes`.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ACTIVATIONS = ("tanh", "sigmoid", "softplus", "sin")
DTYPES = ("float32", "float64")
CONDITIONERS = ("masked", "made")


def _check_common(dim: int, activation: str, dtype: str, widths: dict[str, tuple]) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {ACTIVATIONS}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {DTYPES}")
    for name, ws in widths.items():
        if not all(isinstance(w, int) and w >= 1 for w in ws):
            raise ValueError(f"{name} must hold positive ints, got {ws!r}")


class _Costs:
    @property
    def n_params(self) -> int:
        """Number of stored parameters (masked-out entries included)."""
        return sum(math.prod(s) for s in param_shapes(self).values())

    @property
    def flops(self) -> int:
        """Forward FLOPs per sample: 2 per multiply-add of every linear layer, as computed. The
        transformer's weights are applied once per dimension; every other weight once."""
        return 2 * sum(
            math.prod(shape) * (self.dim if name.startswith("tau") else 1)
            for name, shape in param_shapes(self).items()
            if name.endswith("_w")
        )


@dataclass(frozen=True)
class HollowSpec(_Costs):
    """A HollowNet ``f_i(x) = tau([x_i, h_i, t])`` with ``h_i = c_i(x_{-i}, t)`` in R^d_h.

    ``cond_hidden`` are the conditioner's hidden widths *per dimension*: the masked
    conditioner's layers are ``d*w`` wide, and so are the MADE conditioner's (whose
    hidden-to-hidden layers therefore cost O((d*w)^2)).
    """

    dim: int
    d_h: int = 16
    conditioner: Literal["masked", "made"] = "masked"
    cond_hidden: tuple[int, ...] = (16,)
    trans_hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    time_dependent: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        _check_common(
            self.dim,
            self.activation,
            self.dtype,
            {
                "d_h": (self.d_h,),
                "cond_hidden": self.cond_hidden,
                "trans_hidden": self.trans_hidden,
            },
        )
        if self.conditioner not in CONDITIONERS:
            raise ValueError(
                f"unknown conditioner {self.conditioner!r}; choose from {CONDITIONERS}"
            )


@dataclass(frozen=True)
class MLPSpec(_Costs):
    """A plain MLP R^d -> R^d (input ``[x, t]`` when time-dependent), the dense baseline."""

    dim: int
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    time_dependent: bool = False
    dtype: str = "float32"
    matched: str | None = None  # "params" or "flops" when built by a matching helper

    def __post_init__(self):
        _check_common(self.dim, self.activation, self.dtype, {"hidden": self.hidden})
        if self.matched not in (None, "params", "flops"):
            raise ValueError(f"matched must be None, 'params' or 'flops', got {self.matched!r}")


ModelSpec = HollowSpec | MLPSpec


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in initialisation order (``d = dim``,
    ``d_in = dim + time_dependent``):

    - masked conditioner: ``cond0_w`` (d_in, d, w0) with its ``x_i -> h_i`` entries zeroed, then
      per-dimension block-diagonal layers ``cond{j}_w`` (d, w_{j-1}, w_j); biases ``cond{j}_b``.
    - MADE conditioner: two masked MLPs ``made_fwd{j}_w`` / ``made_rev{j}_w`` (in, out), whose
      strict masks (:func:`made_masks`) make the forward net see ``x_{<i}``, the reverse ``x_{>i}``.
    - transformer, shared by all dimensions: ``tau{j}_w`` (in, out) over ``[x_i, h_i, (t)]``.
    - MLP: ``mlp{j}_w`` (in, out).
    """
    d, t = spec.dim, int(spec.time_dependent)
    shapes: dict[str, tuple[int, ...]] = {}
    if isinstance(spec, MLPSpec):
        _dense_stack(shapes, "mlp", [d + t, *spec.hidden, d])
        return shapes
    widths = [*spec.cond_hidden, spec.d_h]
    if spec.conditioner == "masked":
        shapes["cond0_w"], shapes["cond0_b"] = (d + t, d, widths[0]), (d, widths[0])
        for j in range(1, len(widths)):
            shapes[f"cond{j}_w"] = (d, widths[j - 1], widths[j])
            shapes[f"cond{j}_b"] = (d, widths[j])
    else:
        for direction in ("fwd", "rev"):
            _dense_stack(shapes, f"made_{direction}", [d + t, *(d * w for w in widths)])
    _dense_stack(shapes, "tau", [1 + spec.d_h + t, *spec.trans_hidden, 1])
    return shapes


def _dense_stack(shapes: dict, prefix: str, sizes: list[int]) -> None:
    for j, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"{prefix}{j}_w"], shapes[f"{prefix}{j}_b"] = (n_in, n_out), (n_out,)


def made_masks(spec: HollowSpec, direction: Literal["fwd", "rev"]) -> list[np.ndarray]:
    """Boolean (in, out) masks of one MADE net; output block i sees x_{<i} (fwd) or x_{>i} (rev).

    Degrees: x_j has degree j+1 (reversed for "rev"), t has degree 0 so everything may see it,
    hidden units cycle through 1..d-1, and output unit (i, .) has the degree of x_i. Hidden layers
    connect to degrees >= their input's; the output layer strictly to degrees < its own.
    """
    d, t = spec.dim, int(spec.time_dependent)
    order = np.arange(1, d + 1) if direction == "fwd" else np.arange(d, 0, -1)
    deg_in = np.concatenate([order, np.zeros(t, dtype=int)])
    hidden = [np.arange(d * w) % max(d - 1, 1) + 1 for w in spec.cond_hidden]
    deg_out = np.repeat(order, spec.d_h)
    degrees = [deg_in, *hidden]
    masks = [
        deg_next[None, :] >= deg[:, None] for deg, deg_next in zip(degrees, hidden, strict=False)
    ]
    masks.append(deg_out[None, :] > degrees[-1][:, None])
    return masks


def init_params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 weights, uniform in +-1/sqrt(fan_in); structurally masked entries are zero.

    A fresh dict of **read-only** arrays, shared by every call with the same (spec, seed): the
    last few are cached (:data:`INIT_CACHE` of them), since a d = 4096 HollowNet's are 2.2 GB
    and every backend and benchmark point builds from them. Copy an array before changing it
    (the backends' models copy them into their own tensors)."""
    return dict(_init_params(spec, int(seed)))


INIT_CACHE = 3  # a HollowNet and its two matched MLPs: one d's points


@functools.lru_cache(maxsize=INIT_CACHE)
def _init_params(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(spec).items():
        fan_in = _fan_in(spec, name, shape)
        params[name] = rng.uniform(-1.0, 1.0, size=shape) / math.sqrt(fan_in)
    if isinstance(spec, HollowSpec):
        if spec.conditioner == "masked":
            d = spec.dim
            params["cond0_w"][np.arange(d), np.arange(d), :] = 0.0
        else:
            for direction in ("fwd", "rev"):
                for j, mask in enumerate(made_masks(spec, direction)):
                    params[f"made_{direction}{j}_w"] *= mask
    for value in params.values():
        value.flags.writeable = False
    return params


def _fan_in(spec: ModelSpec, name: str, shape: tuple[int, ...]) -> int:
    if name.endswith("_b"):
        name, shape = name[:-1] + "w", param_shapes(spec)[name[:-1] + "w"]
    if name == "cond0_w":  # x_i is masked out of h_i
        return max(shape[0] - 1, 1)
    return shape[-2]


def param_matched_mlp(spec: HollowSpec, depth: int = 2) -> MLPSpec:
    """The MLP with ``depth`` equal hidden layers whose parameter count is closest to ``spec``'s."""
    return _matched(spec, depth, "params", lambda m: m.n_params, spec.n_params)


def flop_matched_mlp(spec: HollowSpec, depth: int = 2) -> MLPSpec:
    """The MLP with ``depth`` equal hidden layers whose forward FLOPs are closest to ``spec``'s."""
    return _matched(spec, depth, "flops", lambda m: m.flops, spec.flops)


def _matched(spec: HollowSpec, depth: int, kind: str, cost, target: int) -> MLPSpec:
    def mlp(width: int) -> MLPSpec:
        return MLPSpec(
            dim=spec.dim,
            hidden=(width,) * depth,
            activation=spec.activation,
            time_dependent=spec.time_dependent,
            dtype=spec.dtype,
            matched=kind,
        )

    lo, hi = 1, 2
    while cost(mlp(hi)) < target:  # cost grows monotonically with width: bracket, then bisect
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mlp(mid)) < target else (lo, mid)
    return min((mlp(lo), mlp(hi)), key=lambda m: abs(cost(m) - target))


def dense(params, act, prefix: str, z, n_layers: int, masks=None):
    """Linear layers ``prefix{j}`` (``z @ W + b``, W times its mask if given) with ``act``
    between them, not after the last: the same code for torch tensors and JAX arrays."""
    for j in range(n_layers):
        w = params[f"{prefix}{j}_w"]
        if masks is not None:
            w = w * masks[j]
        z = z @ w + params[f"{prefix}{j}_b"]
        if j < n_layers - 1:
            z = act(z)
    return z


def split_args(args: tuple, time_dependent: bool) -> tuple:
    """(t or None, x) from a model call's arguments, ``(x,)`` or ``(t, x)``."""
    if time_dependent:
        if len(args) != 2:
            raise TypeError("a time-dependent model is called as net(t, x)")
        return args
    if len(args) != 1:
        raise TypeError("this model is called as net(x); it is not time-dependent")
    return None, args[0]
