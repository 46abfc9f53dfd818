"""A torch step run as one of its variants (``impls.VARIANTS``): as written, captured whole in
one CUDA graph, compiled by torch.compile, or as written with tau's k = 1 value and tangent in
fused Triton kernels. JAX's variants, jit and pallas, are ``JaxBackend.compile_step``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WARMUP_CALLS = 3  # before a capture: lazy initialisation and cuBLAS workspaces happen here


def torch_variant(
    fn: Callable[..., Any], args: tuple, variant: str
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """(the callable to time, extra_info it learned). Its one-off cost, the warm-up and
    capture of a CUDA graph or torch.compile's compilation, is ``compile_s``."""
    if variant == "eager":
        return fn, {}
    import torch

    on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    start = time.perf_counter()
    if variant == "cudagraph":
        step = capture(fn, args)
    elif variant == "triton":
        step = _fused(fn, "cuda" if on_cuda else "cpu")
        step(*args)  # Triton compiles and autotunes its kernels on the first call
    elif variant == "compile":
        # Static shapes: after a second d, torch.compile would otherwise trace d symbolically,
        # and ops such as the probes' randint take no symbolic sizes. Each point is one shape.
        # Every point's step runs the same code object (grad_step's closure), and Dynamo keeps
        # at most recompile_limit (8) graphs per code object, after which it runs the step
        # eagerly under the "compile" name: a fresh cache per point, as pytorch/benchmark does.
        torch.compiler.reset()
        step = torch.compile(fn, dynamic=False)
        step(*args)  # compiles
    else:
        raise ValueError(
            f"unknown torch variant {variant!r}; choose eager, cudagraph, compile or triton"
        )
    if on_cuda:
        torch.cuda.synchronize()
    return step, {"compile_s": time.perf_counter() - start}


def _fused(fn: Callable[..., Any], platform: str) -> Callable[..., Any]:
    """``fn`` run eagerly, with the k = 1 hollow_forward transformer in the fused Triton
    kernels (impls/torch_backend/fused_tau.py)."""
    from impls._operators import fused

    def step(*args):
        with fused(platform):
            return fn(*args)

    return step


def capture(fn: Callable[..., Any], args: tuple) -> Callable[..., Any]:
    """``fn(*args)`` captured as one CUDA graph; the returned callable replays it and returns
    the captured outputs, refreshed in place. The arguments are baked in: the callable ignores
    its own. Gradients set to None inside ``fn`` are allocated once, in the graph's pool, and
    refilled on every replay: PyTorch's whole-network capture recipe."""
    import torch

    side = torch.cuda.Stream()  # warm-up off the default stream, as the recipe asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)

    def replay(*_ignored):
        graph.replay()
        return out

    return replay
