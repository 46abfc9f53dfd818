"""Third-party-style peers of ``hollow_forward``: the same method written with the frameworks'
own forward-mode AD, as a user without this package would write it.

No HollowNet package exists on PyPI, so the peer is the obvious hand-written one: h =
conditioner(x) computed once, then one JVP of the transformer in x alone with tangent ones.
h enters the JVP as a constant (zero tangent), so the tangent is ``sum_j d tau_i/dx_j`` at h
fixed, and since tau_i sees x only through x_i that is exactly d tau_i/dx_i. The value and the
tangent both still depend on h, so one backward of the fair step's loss reaches every parameter,
the conditioner's included, as ``hollow_forward``'s does.

Peers (``PEERS``, by backend): ``peer_jvp`` (``torch.func.jvp``; ``jax.jvp``) and, torch
only, ``peer_fwad`` (``torch.autograd.forward_ad`` dual tensors). Each runs on the backends'
own models and weights (:mod:`impls.torch_backend.models`, :mod:`impls.jax_backend.models`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS = {"torch": ("peer_jvp", "peer_fwad"), "jax": ("peer_jvp",)}


def value_and_divergence(backend_name: str, peer: str) -> Callable[..., Any]:
    """``fn(net, x, t=None) -> (f (batch, dim), divergence (batch,))`` of the named peer."""
    ddim = value_and_ddim(backend_name, peer)

    def fn(net, x, t=None):
        f, diag = ddim(net, x, t)
        return f, diag.sum(-1)

    return fn


def value_and_ddim(backend_name: str, peer: str) -> Callable[..., Any]:
    """``fn(net, x, t=None) -> (f, D_dim f)``, both (batch, dim): the peer before the sum."""
    if backend_name == "jax":
        return _jax_ddim
    return {"peer_jvp": _torch_jvp_ddim, "peer_fwad": _torch_fwad_ddim}[peer]


def _torch_jvp_ddim(net, x, t=None):
    import torch

    h = net.conditioner(x, t)  # a constant of the JVP: its tangent is zero
    return torch.func.jvp(lambda xv: net.transformer(xv, h, t), (x,), (torch.ones_like(x),))


def _torch_fwad_ddim(net, x, t=None):
    import torch
    import torch.autograd.forward_ad as fwad

    h = net.conditioner(x, t)  # built outside the dual level: no tangent
    with fwad.dual_level():
        f = net.transformer(fwad.make_dual(x, torch.ones_like(x)), h, t)
        value, tangent = fwad.unpack_dual(f)
    return value, tangent


def _jax_ddim(net, x, t=None):
    import jax
    import jax.numpy as jnp

    h = net.conditioner(x, t)  # closed over: a zero tangent, but a primal the grad reaches
    return jax.jvp(lambda xv: net.transformer(xv, h, t), (x,), (jnp.ones_like(x),))


def step(backend, net, x, point) -> tuple[Callable, tuple, Callable]:
    """operators.step's fair train step (loss ``mean(f^2) + sum(div)/batch``, one backward) with
    the peer ``point.method`` in the place of the operator; the same (fn, args, values_of)."""
    op = value_and_divergence(backend.name, point.method)

    def loss(net, x, opts):
        f, values = op(net, x, **opts)
        return (f**2).mean() + values.sum() / x.shape[0], values

    return backend.grad_step(loss), (net, x, {}), lambda out: out[0][1]


def crash(point) -> str | None:
    """Why ``point``'s step cannot be built and run here, found in a child process, or None.
    Inductor's compiled backward of the JVP steps passes a weight's zero tangent, an
    ``aten._efficientzerotensor`` with no storage, to an extern mm and segfaults (torch 2.13,
    CPU; as pytorch/pytorch#197067), and no handler in this process would survive that."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "from bench import perf_check; from bench.workloads.operators import Point; "
        f"from impls import load_backend; perf_check.build(load_backend({point.backend!r}, "
        f"{point.device!r}), {point!r})"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True)
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"its step was killed by signal {-done.returncode} in a child process"
    last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
    return f"its step failed in a child process: {last[:200]}"
