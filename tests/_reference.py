"""Independent references built from each framework's own full Jacobians and Hessians.

They form the whole per-sample derivative tensor d^k f / dx^k (shape (d,)*(k+1)) with nested
jacrev/jacfwd and read its diagonal, so they share no code with the operators under test.
"""

from __future__ import annotations

import functools


def _nested(jacrev, jacfwd, f, k: int):
    """d^k f / dx^k of a per-sample f: one reverse pass, then k - 1 forward ones."""
    deriv = jacrev(f)
    for _ in range(k - 1):
        deriv = jacfwd(deriv)
    return deriv


@functools.cache
def _jax_derivative():
    """The JAX reference, compiled once per model structure, shapes and k (the model and t are
    arguments, not closed over): eager nested jacfwd(jacrev) re-traces at every level and
    takes seconds, and a fresh jit per call would compile again for every test."""
    import equinox as eqx
    import jax

    @eqx.filter_jit
    def derivative(net, x, k: int, t):
        def f(row):
            return (net(t, row[None]) if t is not None else net(row[None]))[0]

        return jax.vmap(_nested(jax.jacrev, jax.jacfwd, f, k))(x)

    return derivative


def reference_derivative(backend, net, x, k: int, t=None):
    """d^k f / dx^k per sample, shape (batch,) + (dim,) * (k + 1), differentiable."""
    if backend.name == "jax":
        import jax.numpy as jnp

        return _jax_derivative()(net, x, k, None if t is None else jnp.asarray(t, x.dtype))
    import torch
    from torch.func import jacfwd, jacrev, vmap

    def f(row):
        args = (torch.as_tensor(t, dtype=row.dtype), row[None]) if t is not None else (row[None],)
        return net(*args)[0]

    return vmap(_nested(jacrev, jacfwd, f, k))(x)


def reference_ddim(backend, net, x, k: int, t=None):
    """D_dim^k f(x), (batch, dim): the diagonal of :func:`reference_derivative`."""
    if backend.name == "jax":
        import jax.numpy as jnp

        idx = jnp.arange(x.shape[1])
    else:
        import torch

        idx = torch.arange(x.shape[1])
    return reference_derivative(backend, net, x, k, t)[(slice(None), *(idx,) * (k + 1))]
