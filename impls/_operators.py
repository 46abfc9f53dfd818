"""Framework-free pieces of both backends' operators (impls/*/operators.py)."""

from __future__ import annotations


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
