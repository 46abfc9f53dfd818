"""Framework-free pieces of both backends' operators (impls/*/operators.py)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

# The device platform ("cuda" or "gpu"; "cpu": interpreted) of the fused k = 1 tau kernel
# (impls/*/fused_tau.py) while a step runs or is traced as a fused variant
# (impls.FUSED_VARIANTS); None: the backend's taylor module.
_FUSED: contextvars.ContextVar[str | None] = contextvars.ContextVar("fused_tau", default=None)


@contextlib.contextmanager
def fused(platform: str) -> Iterator[None]:
    """Within it, hollow_forward at k = 1 runs the backend's fused tau kernel for ``platform``."""
    token = _FUSED.set(platform)
    try:
        yield
    finally:
        _FUSED.reset(token)


def fused_platform() -> str | None:
    """The platform :func:`fused` set, or None outside it."""
    return _FUSED.get()


def hollow_forward(taylor, net, x, t, k: int, value_and_tangent=None):
    """(f, D_dim^k f), both (batch, dim): value and tangent (Taylor series for k > 1) carried by
    hand through the transformer by the backend's ``taylor`` module; exact, since tau is
    separable, and trained by one ordinary reverse pass. ``value_and_tangent``: k = 1's
    kernel if not the taylor module's (a fused one)."""
    h = net.conditioner(x, t)
    if k == 1:  # in cache-sized chunks, with a backward that recomputes each one
        return (value_and_tangent or taylor.value_and_tangent)(net, x, h, t)
    series = taylor.jet(net, x, h, t, k)
    return series[0], series[k]


def nested_jvp(jvp, fun, x, tangent, k: int):
    """(fun(x), d^k/ds^k fun(x + s*tangent) at s=0) through the framework's ``jvp`` (torch.func
    and JAX share its signature); the value rides along as ``aux``."""

    def g(y):
        value = fun(y)
        return value, value

    for _ in range(k):
        g = _along(jvp, g, tangent)
    deriv, value = g(x)
    return value, deriv


def _along(jvp, g, tangent):
    def along(y):
        _, deriv, aux = jvp(g, (y,), (tangent,), has_aux=True)
        return deriv, aux

    return along
