"""The PyTorch backend: :class:`TorchBackend` implements :class:`impls.Backend`."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from impls import _checks, methods
from impls.spec import HollowSpec, ModelSpec
from impls.torch_backend import operators
from impls.torch_backend.models import MLP, HollowNet, build
from impls.torch_backend.variants import torch_variant
from impls.variants import DEFAULT_VARIANT, VARIANTS

__all__ = ["MLP", "HollowNet", "TorchBackend"]

# --bench-matmul-precision's words in torch's
PRECISIONS = {"tf32": "high", "highest": "highest"}


class TorchBackend:
    name = "torch"
    variants = VARIANTS["torch"]
    default_variant = DEFAULT_VARIANT["torch"]
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
        if not hasattr(net, "spec"):  # a model of the caller's own: a cast copy
            if not isinstance(net, torch.nn.Module):
                raise TypeError(f"cannot cast a {type(net).__name__}: it is no torch.nn.Module")
            return copy.deepcopy(net).to(getattr(torch, dtype))
        # Cast, not rebuilt: a build from the seed in dtype would differ by the old rounding.
        cast_net = build(replace(net.spec, dtype=dtype), 0, self.device)
        cast = getattr(torch, dtype)
        cast_net.load_state_dict(
            {k: v.to(cast) if v.is_floating_point() else v for k, v in net.state_dict().items()}
        )
        return cast_net

    def place(self, net: Any) -> Any:
        """A model of the caller's own on this backend's device (an ``nn.Module`` moved)."""
        return net.to(self.device) if isinstance(net, torch.nn.Module) else net

    @staticmethod
    def describe_model(net: Any) -> tuple[int, str | None]:
        """(parameters, their dtype: the first floating one's; None without any)."""
        params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
        floats = [p for p in params if p.is_floating_point()]
        dtype = str(floats[0].dtype).removeprefix("torch.") if floats else None
        return sum(p.numel() for p in params), dtype

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), device=self.device)

    @staticmethod
    def to_numpy(a: torch.Tensor) -> np.ndarray:
        return a.detach().cpu().numpy()

    def sync(self, *arrays) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def random_opts(self, seed: int | None) -> dict[str, Any]:
        return {} if seed is None else {"seed": seed}

    def matmul_precision(self) -> str:
        return torch.get_float32_matmul_precision()

    def set_matmul_precision(self, precision: str) -> None:
        if precision in PRECISIONS:
            torch.set_float32_matmul_precision(PRECISIONS[precision])

    def device_name(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self._cuda else None

    def memory_available(self) -> tuple[int | None, str] | None:
        if not self._cuda:  # the CPU's free memory is the machine's
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + cached, "torch.cuda.mem_get_info"

    def reset_peak_memory(self) -> bool:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return self._cuda

    def peak_memory(self) -> tuple[int, str]:
        return torch.cuda.max_memory_allocated(self.device), "torch.cuda.max_memory_allocated"

    def release_memory(self) -> None:
        if self._cuda:
            torch.cuda.empty_cache()

    def no_grad(self) -> contextlib.AbstractContextManager:
        return torch.no_grad()

    def reference_mode(self) -> contextlib.AbstractContextManager:
        return torch.no_grad()

    def grad_step(
        self, loss: Callable[..., tuple[Any, Any]], argnums: tuple[int, ...] = (0,)
    ) -> Callable[..., Any]:
        """Grads go into the ``.grad`` of the modules ``args[argnums]`` (set to None first)."""

        def step(*args):
            for i in argnums:
                if isinstance(args[i], torch.nn.Module):  # else: a function, no parameters
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
        # No static memory footprint: torch's peak is measured.
        step, learned = torch_variant(fn, args, variant)
        return step, learned.get("compile_s"), None

    def warm_up(self) -> None:
        """Call every method once on a tiny model: torch imports ~800 modules (sympy among
        them) lazily on the first torch.func call, ~3 s that belong to no computation."""
        net = self.build(HollowSpec(dim=2, d_h=1, cond_hidden=(), trans_hidden=(2,)))
        x = self.asarray(np.zeros((1, 2), dtype="float32"))
        with torch.no_grad():
            for method in methods.EXACT_METHODS:
                self.ddim(net, x, k=2, method=method)
            self.divergence(net, x, method="hutchinson")

    def kernel_times(self, call: Callable[[], Any], calls: int) -> tuple[dict[str, float], float]:
        # By the device profiled, not the machine: a CPU step on a GPU machine launches no kernels.
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
