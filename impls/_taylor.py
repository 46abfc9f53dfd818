"""Truncated Taylor series through an activation, framework-free: only +, * and / on arrays,
so both backends' ``taylor`` modules run this one recurrence on their own arrays.

An activation y = a(z) with y' = g(z) z' gets ``y_m = (1/m) sum_{j=1..m} j z_j g_{m-j}``,
g's own series built alongside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Series = list[Any]  # coefficients c_0, c_1, ...: the j-th derivative is j! c_j


def activation(
    name: str,
    act: Callable[[Any], Any],
    z: Series,
    k: int,
    cos: Callable[[Any], Any],
    sigmoid_series: Callable[[Series, int], Series],
) -> Series:
    """The series of act(z) to order k from the series z; ``cos`` is the backend's cosine,
    ``sigmoid_series(z, k)`` its sigmoid's series (softplus' = sigmoid)."""
    y = [act(z[0])]
    if name == "sin":  # sin' = cos, cos' = -sin
        cos_series, minus_y = [cos(z[0])], []
        for m in range(1, k + 1):
            y.append(step(z, cos_series, m))
            minus_y.append(-y[m - 1])
            cos_series.append(step(z, minus_y, m))
        return y
    if name == "softplus":
        sig = sigmoid_series(z, k - 1)
        return y + [step(z, sig, m) for m in range(1, k + 1)]
    g = []  # tanh' = 1 - tanh^2, sigmoid' = sigmoid - sigmoid^2
    for m in range(1, k + 1):
        own = (1 if m == 1 else 0) if name == "tanh" else y[m - 1]
        g.append(own - cauchy(y, y, m - 1))
        y.append(step(z, g, m))
    return y


def step(z: Series, g: Series, m: int) -> Any:
    """The m-th coefficient of y from y' = g z': (1/m) sum_{j=1..m} j z_j g_{m-j}."""
    return sum(j * z[j] * g[m - j] for j in range(1, min(m, len(z) - 1) + 1)) / m


def cauchy(a: Series, b: Series, n: int) -> Any:
    """The n-th coefficient of the product of two series."""
    return sum(a[i] * b[n - i] for i in range(n + 1))
