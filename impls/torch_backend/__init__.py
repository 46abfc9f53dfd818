"""The PyTorch backend: :class:`TorchBackend` implements :class:`impls.Backend`."""

from __future__ import annotations

import numpy as np
import torch

from impls import _checks
from impls.spec import ModelSpec
from impls.torch_backend import operators
from impls.torch_backend.models import MLP, HollowNet, build

__all__ = ["MLP", "HollowNet", "TorchBackend"]


class TorchBackend:
    name = "torch"

    def __init__(self, device: str | None = None):
        self.device = _checks.resolve_device(device, self.devices(), self.name)

    @staticmethod
    def devices() -> list[str]:
        return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]

    def build(self, spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
        return build(spec, seed, self.device)

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), device=self.device)

    @staticmethod
    def to_numpy(a: torch.Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def sync(self, *arrays) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def matmul_precision(self) -> str:
        return torch.get_float32_matmul_precision()

    ddim = staticmethod(operators.ddim)
    divergence = staticmethod(operators.divergence)
    value_and_ddim = staticmethod(operators.value_and_ddim)
    value_and_divergence = staticmethod(operators.value_and_divergence)
