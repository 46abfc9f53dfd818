"""Shared fixtures: both backends on the CPU, float64 specs and independent references."""

from __future__ import annotations

import os

import numpy as np
import pytest

from impls import HollowSpec, load_backend

BACKEND_NAMES = ("torch", "jax")


# Before JAX is imported: on a GPU its pool would otherwise take 75% of the memory at once,
# leaving torch's tests little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_configure(config):
    # The test models are tiny: intra-op threads only add barrier waits, which turn into
    # tens of ms per op when another process shares the cores.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    # Without a GPU the fused Triton kernels (tests/test_fused_tau.py) run in Triton's
    # interpreter, which triton reads when a kernel is defined: set it before any test module
    # imports them. With a GPU they compile and run on it, as the triton variant does.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # One autotuning configuration per kernel: a GPU run compiles each kernel once per
    # specialisation and times none (impls/torch_backend/fused_tau.py's docstring).
    os.environ.setdefault("HOLLOWBENCH_TRITON_CONFIGS", "1")


# Small float64 models that exercise both conditioners, time dependence and k-th derivatives.
SPECS = {
    "masked": HollowSpec(dim=5, d_h=3, cond_hidden=(4,), trans_hidden=(8, 8), dtype="float64"),
    "made": HollowSpec(
        dim=5, d_h=3, conditioner="made", cond_hidden=(3,), trans_hidden=(8,), dtype="float64"
    ),
    "masked_t": HollowSpec(
        dim=4, d_h=2, cond_hidden=(), trans_hidden=(6,), time_dependent=True, dtype="float64"
    ),
}


def backend_or_skip(name: str):
    pytest.importorskip(name)
    if name == "jax":
        pytest.importorskip("equinox")
    return load_backend(name, "cpu")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    return backend_or_skip(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def call_opts(spec) -> dict:
    """The ``t`` option a time-dependent spec needs."""
    return {"t": 0.7} if spec.time_dependent else {}
