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

from typing import Any, Protocol, runtime_checkable

import numpy as np

from impls._checks import EXACT_METHODS, HOLLOW_METHODS, MAX_K, METHODS
from impls.spec import (
    HollowSpec,
    MLPSpec,
    ModelSpec,
    flop_matched_mlp,
    init_params,
    param_matched_mlp,
)

BACKENDS = ("torch", "jax")

__all__ = [
    "BACKENDS",
    "EXACT_METHODS",
    "HOLLOW_METHODS",
    "MAX_K",
    "METHODS",
    "Backend",
    "HollowSpec",
    "MLPSpec",
    "ModelSpec",
    "flop_matched_mlp",
    "init_params",
    "load_backend",
    "param_matched_mlp",
]


@runtime_checkable
class Backend(Protocol):
    """What every backend offers. Arrays are (batch, dim); models are plain callables."""

    name: str
    device: str

    def build(self, spec: ModelSpec, seed: int = 0) -> Any:
        """A model callable as ``net(x)``, or ``net(t, x)`` when ``spec.time_dependent``."""

    def asarray(self, a: np.ndarray) -> Any:
        """``a`` on this backend's device, dtype kept."""

    def to_numpy(self, a: Any) -> np.ndarray: ...

    def sync(self, *arrays: Any) -> None:
        """Block until the device (torch) or the given arrays (JAX) are ready."""

    def devices(self) -> list[str]:
        """Device names this backend can use, e.g. ``["cpu", "cuda:0"]``."""

    def matmul_precision(self) -> str:
        """The float32 matmul precision in force ("highest", "high", "default", ...)."""

    def ddim(self, net: Any, x: Any, k: int = 1, method: str = "hollow", **opts: Any) -> Any:
        """D_dim^k f(x) = [d^k f_i / dx_i^k]_i, shape (batch, dim)."""

    def divergence(self, net: Any, x: Any, method: str = "hollow", **opts: Any) -> Any:
        """sum_i df_i/dx_i, shape (batch,)."""

    def value_and_ddim(
        self, net: Any, x: Any, k: int = 1, method: str = "hollow", **opts: Any
    ) -> tuple[Any, Any]:
        """(f(x), D_dim^k f(x)), both (batch, dim), from one forward pass."""

    def value_and_divergence(
        self, net: Any, x: Any, method: str = "hollow", **opts: Any
    ) -> tuple[Any, Any]:
        """(f(x) (batch, dim), its divergence (batch,)), from one forward pass: the fair train
        step's loss takes both and runs one backward."""


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
