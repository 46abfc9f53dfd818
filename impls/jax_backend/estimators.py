"""Hutch++, XTrace and XDiag (:mod:`impls._estimators`) in JAX: J's products are JVPs of one
``jax.linearize`` of the batched f, or VJPs of its transpose, vectorised over the columns.

On XLA:CPU (jaxlib 0.10.2), the jitted XTrace at d = 128 and 48 products can deadlock on its
second call, idle, in the runtime; the whole process's later calls then wait too.
``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` avoids it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from impls import _estimators


def _products(fun, x: jax.Array):
    f, lin = jax.linearize(fun, x)

    def vjps(cotangents: jax.Array) -> jax.Array:
        transposed = jax.linear_transpose(lin, x)
        return _apply(lambda v: transposed(v)[0], cotangents)

    return (lambda tangents: (f, _apply(lin, tangents))), vjps


def _apply(linear, columns: jax.Array) -> jax.Array:
    """A linear map of the batch applied to each column of (batch, d, n), vectorised."""
    return jax.vmap(linear, in_axes=-1, out_axes=-1)(columns)


def _loo(r: jax.Array) -> jax.Array:
    eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape)
    inv_t = jax.scipy.linalg.solve_triangular(r, eye, lower=False).mT
    return inv_t / jnp.linalg.norm(inv_t, axis=-2, keepdims=True)


estimate, hutchpp, xtrace, xdiag = _estimators.bind(_products, jnp, _loo)
