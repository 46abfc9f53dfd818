"""The PyTorch backend: :class:`TorchBackend` implements :class:`impls.Backend`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from impls import _checks
from impls.spec import HollowSpec, ModelSpec
from impls.torch_backend import operators
from impls.torch_backend.models import MLP, HollowNet, build
from impls.torch_backend.variants import torch_variant

__all__ = ["MLP", "HollowNet", "TorchBackend"]

# --bench-matmul-precision's words in torch's
PRECISIONS = {"tf32": "high", "highest": "highest"}


class TorchBackend:
    name = "torch"
    variants = _checks.VARIANTS["torch"]
    default_variant = _checks.DEFAULT_VARIANT["torch"]
    pure_steps = False  # a step may ignore its arguments (a CUDA graph replays what it captured)

    def __init__(self, device: str | None = None):
        self.device = _checks.resolve_device(device, self.devices(), self.name)
        self._cuda = self.device.startswith("cuda")

    @staticmethod
    def devices() -> list[str]:
        return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]

    def build(self, spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
        return build(spec, seed, self.device)

    def astype(self, net: torch.nn.Module, dtype: str) -> torch.nn.Module:
        """The same model in ``dtype`` with the weights cast exactly (a build from the seed in
        the new dtype would differ by the rounding of the old one)."""
        copy = build(replace(net.spec, dtype=dtype), 0, self.device)
        cast = getattr(torch, dtype)
        copy.load_state_dict(
            {k: v.to(cast) if v.is_floating_point() else v for k, v in net.state_dict().items()}
        )
        return copy

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), device=self.device)

    @staticmethod
    def to_numpy(a: torch.Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def sync(self, *arrays) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def random_opts(self, seed: int | None) -> dict[str, Any]:
        """Options that seed a random operator: ``seed``; none draws from torch's global RNG."""
        return {} if seed is None else {"seed": seed}

    # --- precision, memory, device --------------------------------------------------------

    def matmul_precision(self) -> str:
        return torch.get_float32_matmul_precision()

    def set_matmul_precision(self, precision: str) -> None:
        """ "default" (leave it), "tf32" or "highest" for float32 matmuls."""
        if precision in PRECISIONS:
            torch.set_float32_matmul_precision(PRECISIONS[precision])

    def device_name(self) -> str | None:
        """The GPU's name; None on the CPU (the caller knows the CPU's)."""
        return torch.cuda.get_device_name(self.device) if self._cuda else None

    def memory_available(self) -> tuple[int | None, str] | None:
        """(bytes a new computation may still use, where the figure came from); None on the
        CPU, whose free memory is the machine's."""
        if not self._cuda:
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + cached, "torch.cuda.mem_get_info"

    def reset_peak_memory(self) -> bool:
        """Start a peak-memory window; False where torch does not track the device (CPU)."""
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return self._cuda

    def peak_memory(self) -> tuple[int, str]:
        """(peak bytes since :meth:`reset_peak_memory`, how they were measured)."""
        return torch.cuda.max_memory_allocated(self.device), "torch.cuda.max_memory_allocated"

    def release_memory(self) -> None:
        """Hand cached device memory back, so the next computation sees the real free memory."""
        if self._cuda:
            torch.cuda.empty_cache()

    # --- steps ----------------------------------------------------------------------------

    def no_grad(self) -> contextlib.AbstractContextManager:
        return torch.no_grad()

    def reference_mode(self) -> contextlib.AbstractContextManager:
        """Where a float64 reference is computed: no autograd graph."""
        return torch.no_grad()

    def grad_step(
        self, loss: Callable[..., tuple[Any, Any]], argnums: tuple[int, ...] = (0,)
    ) -> Callable[..., Any]:
        """``step(*args) -> ((loss, aux), None)``: ``loss(*args) -> (loss, aux)``, then the
        backward pass into the parameters of the modules ``args[argnums]`` (grads set to None
        first); ``aux`` detached."""

        def step(*args):
            for i in argnums:
                args[i].zero_grad(set_to_none=True)
            value, aux = loss(*args)
            value.backward()
            return (value.detach(), aux.detach() if torch.is_tensor(aux) else aux), None

        return step

    @staticmethod
    def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    def compile_step(
        self, fn: Callable[..., Any], args: tuple, variant: str = "eager"
    ) -> tuple[Callable[..., Any], float | None, tuple[int | None, str | None] | None]:
        """(the callable to time, seconds its variant took to set up or None for eager, None:
        torch has no static memory footprint, its peak is measured)."""
        step, learned = torch_variant(fn, args, variant)
        return step, learned.get("compile_s"), None

    def warm_up(self) -> None:
        """Call every method once on a tiny model: torch imports ~800 modules (sympy among
        them) lazily on the first torch.func call, ~3 s that belong to no computation."""
        net = self.build(HollowSpec(dim=2, d_h=1, cond_hidden=(), trans_hidden=(2,)))
        x = self.asarray(np.zeros((1, 2), dtype="float32"))
        with torch.no_grad():
            for method in _checks.EXACT_METHODS:
                self.ddim(net, x, k=2, method=method)
            self.divergence(net, x, method="hutchinson")

    def kernel_times(self, call: Callable[[], Any], calls: int) -> tuple[dict[str, float], float]:
        """Kernel (GPU) or op (CPU) self time in us over ``calls`` calls, and their sum. By
        the device profiled, not by whether the machine has a GPU: a CPU step on a GPU machine
        launches no kernels."""
        from torch.profiler import ProfilerActivity

        gpu = self._cuda
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                call()
        times: dict[str, float] = {}
        for evt in prof.key_averages():
            # On a GPU only kernels and copies count: an aten op's device time is its kernels'.
            if gpu and evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = evt.self_device_time_total if gpu else evt.self_cpu_time_total
            if us > 0:
                times[evt.key] = times.get(evt.key, 0.0) + us
        return times, float(sum(times.values()))

    ddim = staticmethod(operators.ddim)
    divergence = staticmethod(operators.divergence)
    value_and_ddim = staticmethod(operators.value_and_ddim)
    value_and_divergence = staticmethod(operators.value_and_divergence)
