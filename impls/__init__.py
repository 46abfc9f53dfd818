"""hollowbench implementations: one interface, a PyTorch and a JAX backend.

>>> from impls import HollowSpec, load_backend
>>> B = load_backend("torch")                      # or "jax"; device="cuda:0"
>>> net = B.build(HollowSpec(dim=8), seed=0)       # same spec + seed -> same weights in both
>>> x = B.asarray(np.random.randn(32, 8).astype("float32"))
>>> B.divergence(net, x)                            # (32,), exact, costs ~1 pass
>>> B.ddim(net, x, k=2, method="hollow_forward")    # (32, 8): d^2 f_i / dx_i^2
>>> f, div = B.value_and_divergence(net, x)         # f and its divergence from one pass
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

from impls import methods
from impls.methods import MAX_K, Method
from impls.spec import (
    HollowSpec,
    MLPSpec,
    ModelSpec,
    flop_matched_mlp,
    init_params,
    param_matched_mlp,
)
from impls.variants import DEFAULT_VARIANT, FUSED_BASE, FUSED_VARIANTS, VARIANTS

BACKENDS = tuple(VARIANTS)
# The registry's views (impls.methods.VIEWS), read when imported: a method registered first shows.
_METHOD_VIEWS = (
    "METHODS", "HOLLOW_METHODS", "DENSE_METHODS", "EXACT_METHODS", "STOCHASTIC_METHODS",
    "ESTIMATORS",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _METHOD_VIEWS:
        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "DEFAULT_VARIANT",
    "DENSE_METHODS",
    "ESTIMATORS",
    "EXACT_METHODS",
    "FUSED_BASE",
    "FUSED_VARIANTS",
    "HOLLOW_METHODS",
    "MAX_K",
    "METHODS",
    "STOCHASTIC_METHODS",
    "VARIANTS",
    "Backend",
    "HollowSpec",
    "MLPSpec",
    "Method",
    "ModelSpec",
    "flop_matched_mlp",
    "init_params",
    "load_backend",
    "param_matched_mlp",
]


@runtime_checkable
class Backend(Protocol):
    """What every backend offers, so that no caller asks which one it holds. Arrays are
    (batch, dim); models are plain callables. A *step* is ``fn(*args)``; ``compile_step`` turns
    it into what a benchmark times (JAX: jit; torch: a variant, ``VARIANTS``)."""

    name: str  # "torch" | "jax": for labels and file names only
    device: str  # "cpu" | "cuda:N"
    variants: tuple[str, ...]  # how its steps can run; the first is the default
    default_variant: str
    pure_steps: bool  # a compiled step is a pure function of its arguments (JAX)

    # Models: net(x), or net(t, x) when spec.time_dependent; astype casts the weights exactly.
    # The operators also take a model of the caller's own, without a spec: any callable mapping
    # (batch, dim) to (batch, dim) (torch: an nn.Module; JAX: an equinox module), called as
    # net(x); place puts one on this backend's device, describe_model gives its (parameter
    # count, dtype), and astype casts a copy (its floating parameters).
    def build(self, spec: ModelSpec, seed: int = 0) -> Any: ...
    def astype(self, net: Any, dtype: str) -> Any: ...
    def place(self, net: Any) -> Any: ...
    def describe_model(self, net: Any) -> tuple[int, str | None]: ...

    # Arrays: asarray keeps the dtype; sync blocks until the device (torch) or arrays (JAX) are
    # ready; random_opts seed a random operator (torch seed, JAX a device key; None: torch's
    # global RNG, JAX's key 0).
    def asarray(self, a: np.ndarray) -> Any: ...
    def to_numpy(self, a: Any) -> np.ndarray: ...
    def sync(self, *arrays: Any) -> None: ...
    def random_opts(self, seed: int | None) -> dict[str, Any]: ...

    # Device: devices() names those usable ("cpu", "cuda:0"); device_name is the GPU's (None on
    # the CPU); matmul precision of float32 in force ("highest", "high", ...), set as "default"
    # (leave it), "tf32" or "highest".
    def devices(self) -> list[str]: ...
    def device_name(self) -> str | None: ...
    def matmul_precision(self) -> str: ...
    def set_matmul_precision(self, precision: str) -> None: ...

    # Memory: (bytes a new computation may use, source) or None where the framework cannot say;
    # a peak window (reset: False where none is tracked) read as (bytes, how measured);
    # release_memory returns cached memory, so the next computation sees what is really free.
    def memory_available(self) -> tuple[int | None, str] | None: ...
    def reset_peak_memory(self) -> bool: ...
    def peak_memory(self) -> tuple[int | None, str | None]: ...
    def release_memory(self) -> None: ...

    # Steps: no_grad records no autograd graph; reference_mode is where a float64 reference is
    # computed (no graph, full-precision matmuls). grad_step turns loss(*args) -> (loss, aux)
    # into step(*args) -> ((loss, aux), grads) into the parameters of args[argnums] (torch:
    # grads into .grad, returned as None). jit compiles on first call (JAX) or is the identity.
    def no_grad(self) -> AbstractContextManager: ...
    def reference_mode(self) -> AbstractContextManager: ...
    def grad_step(self, loss: Callable, argnums: tuple[int, ...] = (0,)) -> Callable: ...
    def jit(self, fn: Callable) -> Callable: ...

    def compile_step(
        self, fn: Callable, args: tuple, variant: str = ...
    ) -> tuple[Callable, float | None, tuple[int | None, str | None] | None]:
        """(the callable to time, seconds of one-off compilation or capture, or None, and the
        compiled step's static footprint (bytes, kind), or None where it is measured)."""

    def warm_up(self) -> None:
        """Pay one-off import and initialisation costs outside any timing."""

    def kernel_times(self, call: Callable[[], Any], calls: int) -> tuple[dict[str, float], float]:
        """Kernel (GPU) or op (CPU) self time in us by name over ``calls`` calls, and the sum."""

    # The operators. D_dim^k f(x) = [d^k f_i / dx_i^k]_i is (batch, dim), the divergence
    # sum_i df_i/dx_i (batch,); the value_and_ forms also return f(x) (batch, dim) from the same
    # forward pass, so that the fair train step's loss takes both and runs one backward.
    def ddim(self, net: Any, x: Any, k: int = 1, method: str = "hollow", **opts: Any) -> Any: ...
    def divergence(self, net: Any, x: Any, method: str = "hollow", **opts: Any) -> Any: ...
    def value_and_ddim(
        self, net: Any, x: Any, k: int = 1, method: str = "hollow", **opts: Any
    ) -> tuple[Any, Any]: ...
    def value_and_divergence(
        self, net: Any, x: Any, method: str = "hollow", **opts: Any
    ) -> tuple[Any, Any]: ...


def load_backend(name: str, device: str | None = None) -> Backend:
    """The backend ``name`` ("torch" or "jax") on ``device``: "cpu", "cuda" or "cuda:N";
    None picks the first GPU, else the CPU."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    try:
        if name == "torch":
            from impls.torch_backend import TorchBackend as cls
        else:
            from impls.jax_backend import JaxBackend as cls
    except ModuleNotFoundError as err:
        raise ImportError(
            f"backend {name!r} needs the package {err.name!r}: pip install 'hollowbench[{name}]'"
        ) from err
    return cls(device)
