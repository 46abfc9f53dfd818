"""Independent references built from each framework's own full Jacobians and Hessians.

They form the whole per-sample derivative tensor d^k f / dx^k (shape (d,)*(k+1)) with nested
jacrev/jacfwd and read its diagonal, so they share no code with the operators under test.
"""

from __future__ import annotations


def _transforms(backend):
    """(jacrev, jacfwd, vmap, asarray, arange) of the backend's framework."""
    if backend.name == "torch":
        import torch
        from torch.func import jacfwd, jacrev, vmap

        return jacrev, jacfwd, vmap, torch.as_tensor, torch.arange
    import jax
    import jax.numpy as jnp

    # jit: eager nested jacfwd(jacrev) re-traces at every level and takes seconds
    return jax.jacrev, jax.jacfwd, lambda f: jax.jit(jax.vmap(f)), jnp.asarray, jnp.arange


def reference_derivative(backend, net, x, k: int, t=None):
    """d^k f / dx^k per sample, shape (batch,) + (dim,) * (k + 1), differentiable."""
    jacrev, jacfwd, vmap, asarray, _ = _transforms(backend)

    def f(row):
        args = (asarray(t, dtype=row.dtype), row[None]) if t is not None else (row[None],)
        return net(*args)[0]

    deriv = jacrev(f)
    for _ in range(k - 1):
        deriv = jacfwd(deriv)
    return vmap(deriv)(x)


def reference_ddim(backend, net, x, k: int, t=None):
    """D_dim^k f(x), (batch, dim): the diagonal of :func:`reference_derivative`."""
    idx = _transforms(backend)[4](x.shape[1])
    return reference_derivative(backend, net, x, k, t)[(slice(None), *(idx,) * (k + 1))]
