"""The JAX backend: :class:`JaxBackend` implements :class:`impls.Backend`.

Loading it turns on ``jax_enable_x64`` so that float64 specs really run in float64; every array
this package creates carries an explicit dtype, so float32 models stay float32.
"""

from __future__ import annotations

import jax
import numpy as np

from impls import _checks
from impls.jax_backend import operators
from impls.jax_backend.models import MLP, HollowNet, build
from impls.spec import ModelSpec

__all__ = ["MLP", "HollowNet", "JaxBackend"]


class JaxBackend:
    name = "jax"

    def __init__(self, device: str | None = None):
        jax.config.update("jax_enable_x64", True)
        self.device = _checks.resolve_device(device, self.devices(), self.name)
        self.jax_device = _jax_devices()[self.device]

    @staticmethod
    def devices() -> list[str]:
        return list(_jax_devices())

    def build(self, spec: ModelSpec, seed: int = 0):
        return build(spec, seed, self.jax_device)

    def asarray(self, a: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(a), self.jax_device)

    @staticmethod
    def to_numpy(a: jax.Array) -> np.ndarray:
        return np.asarray(a)

    def sync(self, *arrays) -> None:
        jax.block_until_ready(arrays)

    def matmul_precision(self) -> str:
        return str(jax.config.jax_default_matmul_precision or "default")

    ddim = staticmethod(operators.ddim)
    divergence = staticmethod(operators.divergence)
    value_and_ddim = staticmethod(operators.value_and_ddim)
    value_and_divergence = staticmethod(operators.value_and_divergence)


def _jax_devices() -> dict[str, jax.Device]:
    """Our device names ("cpu", "cuda:N") for JAX's devices."""
    found = {"cpu": jax.devices("cpu")[0]}
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU backend installed or visible
        gpus = []
    found.update({f"cuda:{i}": dev for i, dev in enumerate(gpus)})
    return found
