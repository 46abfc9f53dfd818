"""The JAX backend: :class:`JaxBackend` implements :class:`impls.Backend`.

Loading it turns on ``jax_enable_x64`` so that float64 specs really run in float64; every array
this package creates carries an explicit dtype, so float32 models stay float32.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import equinox as eqx
import jax
import numpy as np

from impls import _checks, _operators
from impls.jax_backend import operators
from impls.jax_backend.models import MLP, HollowNet, build
from impls.jax_backend.profiling import kernel_times
from impls.spec import ModelSpec
from impls.variants import DEFAULT_VARIANT, VARIANTS

__all__ = ["MLP", "HollowNet", "JaxBackend"]

# --bench-matmul-precision's words in JAX's
PRECISIONS = {"tf32": "tensorfloat32", "highest": "highest"}


class JaxBackend:
    name = "jax"
    variants = VARIANTS["jax"]
    default_variant = DEFAULT_VARIANT["jax"]
    pure_steps = True  # a compiled step is a pure function of its arguments

    def __init__(self, device: str | None = None):
        jax.config.update("jax_enable_x64", True)
        self.device = _checks.resolve_device(device, self.devices(), self.name)
        self.jax_device = _jax_devices()[self.device]

    @staticmethod
    def devices() -> list[str]:
        return list(_jax_devices())

    def build(self, spec: ModelSpec, seed: int = 0):
        return build(spec, seed, self.jax_device)

    def astype(self, net, dtype: str):
        if not hasattr(net, "spec"):  # a model of the caller's own: its float leaves cast
            if not any(eqx.is_inexact_array(leaf) for leaf in jax.tree.leaves(net)):
                raise TypeError(
                    f"cannot cast a {type(net).__name__}: it has no floating array leaves (a "
                    "function's closed-over weights are none; an equinox module's are)"
                )
            cast = lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf  # noqa: E731
            return jax.tree.map(cast, net)
        copy = build(replace(net.spec, dtype=dtype), 0, self.jax_device)
        params = {k: v.astype(dtype) for k, v in net.params.items()}
        return eqx.tree_at(lambda m: m.params, copy, params)

    def place(self, net):
        """A model of the caller's own with its arrays on this backend's device."""
        arrays, rest = eqx.partition(net, eqx.is_array)
        return eqx.combine(jax.device_put(arrays, self.jax_device), rest)

    @staticmethod
    def describe_model(net) -> tuple[int, str | None]:
        """(parameters: the floating array leaves' entries, their dtype: the first one's)."""
        floats = [leaf for leaf in jax.tree.leaves(net) if eqx.is_inexact_array(leaf)]
        return sum(leaf.size for leaf in floats), (floats[0].dtype.name if floats else None)

    def asarray(self, a: np.ndarray) -> jax.Array:
        return jax.device_put(np.asarray(a), self.jax_device)

    @staticmethod
    def to_numpy(a: jax.Array) -> np.ndarray:
        return np.asarray(a)

    def sync(self, *arrays) -> None:
        jax.block_until_ready(arrays)

    def random_opts(self, seed: int | None) -> dict[str, Any]:
        return {"key": jax.device_put(jax.random.key(seed or 0), self.jax_device)}

    def matmul_precision(self) -> str:
        return str(jax.config.jax_default_matmul_precision or "default")

    def set_matmul_precision(self, precision: str) -> None:
        if precision in PRECISIONS:
            jax.config.update("jax_default_matmul_precision", PRECISIONS[precision])

    def device_name(self) -> str | None:
        return self.jax_device.device_kind if self.device.startswith("cuda") else None

    def memory_available(self) -> tuple[int | None, str] | None:
        # None where JAX does not say: the CPU, or a GPU without a limit in memory_stats.
        if not self.device.startswith("cuda"):
            return None
        stats = self.jax_device.memory_stats() or {}
        if "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0), "jax memory_stats"
        return None

    def reset_peak_memory(self) -> bool:
        # JAX's peak counter is process-wide and cannot be reset; a compiled step's footprint
        # comes from compile_step instead.
        return False

    def peak_memory(self) -> tuple[int | None, str | None]:
        return None, None

    def release_memory(self) -> None:
        pass

    def no_grad(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def reference_mode(self) -> contextlib.AbstractContextManager:
        return jax.default_matmul_precision("highest")

    def grad_step(
        self, loss: Callable[..., tuple[Any, Any]], argnums: tuple[int, ...] = (0,)
    ) -> Callable[..., Any]:
        """Pure: the harness jits it."""
        if argnums == (0,):  # equinox's filter: non-array leaves of the module are static
            step = eqx.filter_value_and_grad(loss, has_aux=True)
            return lambda *args: step(*args)  # a function: jax.jit hashes a Module's fields
        return jax.value_and_grad(loss, argnums=argnums, has_aux=True)

    jit = staticmethod(jax.jit)

    def compile_step(
        self, fn: Callable[..., Any], args: tuple, variant: str = "jit"
    ) -> tuple[Callable[..., Any], float, tuple[int | None, str | None]]:
        """(``fn`` compiled ahead of time for ``args``, compile seconds, the executable's
        device footprint (bytes, kind) from XLA's memory analysis). ``pallas``: traced with
        hollow_forward's k = 1 transformer in the fused Pallas kernel (interpreted on a CPU)."""
        return self.lower_step(fn, args, variant)()

    def lower_step(
        self, fn: Callable[..., Any], args: tuple, variant: str = "jit"
    ) -> Callable[[], tuple[Callable[..., Any], float, tuple[int | None, str | None]]]:
        """:meth:`compile_step` in two parts: ``fn`` traced and lowered for ``args`` now, on
        this thread (Python), and the rest, XLA's compilation, returned as a call that any
        thread may make (XLA releases the GIL), so several steps compile at once. The
        compile seconds it returns are the lowering's plus the compilation's."""
        if variant not in self.variants:
            choices = " or ".join(self.variants)
            raise ValueError(f"unknown JAX variant {variant!r}; choose {choices}")
        traced, fused = fn, contextlib.nullcontext()
        if variant == "pallas":
            # jit caches traces by function: a fresh one, so that neither this trace nor an
            # earlier one of fn without the kernel is ever reused for the other.
            traced, fused = (lambda *a: fn(*a)), _operators.fused(self.jax_device.platform)
        filtered = not all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(args))
        if filtered:  # a model of the caller's own with functions or ints among its leaves
            dynamic, static = eqx.partition(args, eqx.is_array)
            traced = functools.partial(_combined, traced, static)
            args = (dynamic,)
        start = time.perf_counter()
        with fused:  # tracing happens in lower()
            lowered = jax.jit(traced).lower(*args)
        lower_s = time.perf_counter() - start

        def compile_rest():
            start = time.perf_counter()
            compiled = lowered.compile()
            call = compiled
            if filtered:  # the same partition of each call's arguments: its arrays only
                call = lambda *a: compiled(eqx.filter(a, eqx.is_array))  # noqa: E731
            return call, lower_s + time.perf_counter() - start, _xla_peak(compiled)

        return compile_rest

    def warm_up(self) -> None:
        """Nothing: JAX imports its transformations up front; tiny calls would only compile."""

    kernel_times = staticmethod(kernel_times)

    ddim = staticmethod(operators.ddim)
    divergence = staticmethod(operators.divergence)
    value_and_ddim = staticmethod(operators.value_and_ddim)
    value_and_divergence = staticmethod(operators.value_and_divergence)


def _combined(fn: Callable[..., Any], static: Any, dynamic: Any) -> Any:
    """fn of the arguments ``dynamic`` (arrays) and ``static`` (the rest) stand for."""
    return fn(*eqx.combine(dynamic, static))


def _xla_peak(compiled) -> tuple[int | None, str | None]:
    """Arguments + outputs + temporaries of an XLA executable (its device footprint)."""
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes + m.output_size_in_bytes
            + m.temp_size_in_bytes - m.alias_size_in_bytes
        )  # fmt: skip
    except Exception:  # not every platform reports it
        return None, None
    return int(total), "xla_memory_analysis"


def _jax_devices() -> dict[str, jax.Device]:
    """Our device names ("cpu", "cuda:N") for JAX's devices."""
    found = {"cpu": jax.devices("cpu")[0]}
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU backend installed or visible
        gpus = []
    found.update({f"cuda:{i}": dev for i, dev in enumerate(gpus)})
    return found
