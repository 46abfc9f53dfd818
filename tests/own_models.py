"""Model factories of a user's own (``--bench-model-factory own_models:<name>``) for the tests:
``function(backend_name, dim, seed)`` -> a model mapping (batch, dim) to (batch, dim)."""

from __future__ import annotations

import numpy as np

from impls import HollowSpec, load_backend


def weights(dim: int, seed: int, width: int = 6, dtype: str = "float64") -> list[np.ndarray]:
    """A two-layer MLP's (w1, b1, w2, b2), for ``y = tanh(x @ w1 + b1) @ w2 + b2``."""
    rng = np.random.default_rng(seed)
    shapes = [(dim, width), (width,), (width, dim), (dim,)]
    return [rng.uniform(-1, 1, size=s).astype(dtype) for s in shapes]


def torch_mlp(dim: int, seed: int, dtype: str = "float64", out: int | None = None):
    import torch

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            w1, b1, w2, b2 = weights(dim, seed, dtype=dtype)
            tensors = [w1, b1, w2[:, :out], b2[:out]]
            self.params = torch.nn.ParameterList(
                torch.nn.Parameter(torch.tensor(a)) for a in tensors
            )

        def forward(self, x):
            w1, b1, w2, b2 = self.params
            return torch.tanh(x @ w1 + b1) @ w2 + b2

    return MLP()


def jax_mlp(dim: int, seed: int, dtype: str = "float64", out: int | None = None):
    """An equinox module that vmaps its per-sample network over the batch."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class MLP(eqx.Module):
        params: list
        act: object = jnp.tanh  # a function among the leaves, as in eqx.nn.MLP

        def sample(self, x):
            w1, b1, w2, b2 = self.params
            return self.act(x @ w1 + b1) @ w2 + b2

        def __call__(self, x):
            return jax.vmap(self.sample)(x)

    w1, b1, w2, b2 = weights(dim, seed, dtype=dtype)
    return MLP([jnp.asarray(a) for a in (w1, b1, w2[:, :out], b2[:out])])


def mlp(backend_name: str, dim: int, seed: int):
    """float32, as the sweep's built-in models."""
    make = torch_mlp if backend_name == "torch" else jax_mlp
    return make(dim, seed, dtype="float32")


def hollownet(backend_name: str, dim: int, seed: int):
    """A HollowNet the backend built: the hollow methods run on it too."""
    return load_backend(backend_name, "cpu").build(HollowSpec(dim=dim, d_h=2, trans_hidden=(8,)))


def uncastable(backend_name: str, dim: int, seed: int):
    """A plain function (no module to cast to float64): no error figure, with the reason."""
    net = mlp(backend_name, dim, seed)
    return lambda x: net(x)
