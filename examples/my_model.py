"""A model of your own in the sweep: ``pytest bench --bench-model-factory examples.my_model:build``.

The harness calls ``build(backend_name, dim, seed)`` once per backend and d; the model maps a
(batch, dim) array to (batch, dim): a torch ``nn.Module``, or an equinox module (here one that
vmaps a per-sample MLP, whose weights stay the module's leaves). The divergence and ddim
workloads run the dense methods and the stochastic estimators on it; the hollow methods need a
HollowNet (return ``load_backend(backend_name).build(HollowSpec(dim=dim))`` to time them).
"""


def build(backend_name: str, dim: int, seed: int):
    return torch_mlp(dim, seed) if backend_name == "torch" else jax_mlp(dim, seed)


def torch_mlp(dim: int, seed: int):
    import torch

    torch.manual_seed(seed)
    layers = [torch.nn.Linear(dim, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, dim))


def jax_mlp(dim: int, seed: int):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    key = jax.random.key(seed)
    mlp = eqx.nn.MLP(dim, dim, 64, depth=2, activation=jnp.tanh, key=key, dtype=jnp.float32)
    return eqx.filter_vmap(mlp)  # per sample -> per batch
