"""JAX HollowNet and MLP (equinox modules, so pytrees that ``jax.jit`` and ``jax.grad`` take),
built from :func:`impls.spec.init_params`; called and split as the torch ones
(:mod:`impls.torch_backend.models`).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from impls.spec import HollowSpec, MLPSpec, ModelSpec, dense, init_params, made_masks, split_args


def _softplus(z: jax.Array) -> jax.Array:
    # The stable formula, written out: exp(-|z|) <= 1 keeps it overflow-free. (It once had
    # to be, as jax.experimental.jet could not trace jax.nn.softplus's custom_jvp; no operator
    # uses jet now: impls/jax_backend/taylor.py carries the Taylor series by hand.)
    return jnp.maximum(z, 0) + jnp.log1p(jnp.exp(-jnp.abs(z)))


ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": _softplus,
    "sin": jnp.sin,
}


class _Model(eqx.Module):
    spec: ModelSpec = eqx.field(static=True)
    params: dict[str, jax.Array]

    def __call__(self, *args: jax.Array) -> jax.Array:
        t, x = split_args(args, self.spec.time_dependent)
        return self.evaluate(x, None if t is None else jnp.asarray(t, dtype=x.dtype))

    def act(self, z: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.spec.activation](z)


class MLP(_Model):
    """Plain MLP R^d -> R^d; the dense baseline."""

    def evaluate(self, x: jax.Array, t: jax.Array | None = None) -> jax.Array:
        return dense(self.params, self.act, "mlp", _with_time(x, t), len(self.spec.hidden) + 1)


class HollowNet(_Model):
    """f_i(x) = tau([x_i, h_i, t]) with h_i = c_i(x_{-i}, t); see :class:`impls.spec.HollowSpec`."""

    def evaluate(self, x: jax.Array, t: jax.Array | None = None) -> jax.Array:
        return self.transformer(x, self.conditioner(x, t), t)

    def conditioner(self, x: jax.Array, t: jax.Array | None = None) -> jax.Array:
        """h, shape (batch, dim, d_h); h[:, i] never depends on x[:, i].

        Computed as (dim, batch, w): the per-dimension layers are batched matmuls over d, whose
        batch dimension XLA wants leading; the final transpose cancels against tau's own.
        """
        spec, batch = self.spec, x.shape[0]
        if spec.conditioner == "made":
            n = len(spec.cond_hidden) + 1
            z = sum(
                dense(self.params, self.act, f"made_{dn}", _with_time(x, t), n, _masks(spec, dn))
                for dn in ("fwd", "rev")
            )
            return self.act(z).reshape(batch, spec.dim, spec.d_h)
        w0 = self.params["cond0_w"]
        # Take x_i's own contribution back out instead of masking the (d_in, d, w) weight on
        # every call: O(batch*d*w) rather than O(d^2*w), and d h_i / d x_i is exactly zero.
        own = w0[jnp.arange(spec.dim), jnp.arange(spec.dim)]  # (d, w)
        z = (_with_time(x, t) @ w0.reshape(w0.shape[0], -1)).reshape(batch, spec.dim, -1)
        z = jnp.swapaxes(z, 0, 1) - x.T[..., None] * own[:, None, :]
        z = self.act(z + self.params["cond0_b"][:, None, :])
        for j in range(1, len(spec.cond_hidden) + 1):
            z = jnp.einsum("dbi,dio->dbo", z, self.params[f"cond{j}_w"])
            z = self.act(z + self.params[f"cond{j}_b"][:, None, :])
        return jnp.swapaxes(z, 0, 1)

    def transformer(self, x: jax.Array, h: jax.Array, t: jax.Array | None = None) -> jax.Array:
        """f, shape (batch, dim): one MLP shared by all dimensions, over rows [x_i, h_i, t]."""
        z = self.transformer_first(x, h, t)
        for j in range(1, len(self.spec.trans_hidden) + 1):
            z = self.act(z) @ self.params[f"tau{j}_w"] + self.params[f"tau{j}_b"]
        return self.from_rows(z[..., 0])

    def transformer_first(
        self, x: jax.Array, h: jax.Array, t: jax.Array | None = None
    ) -> jax.Array:
        """The transformer's first pre-activation over its rows, (dim, batch, width), split by
        input as the torch one (:mod:`impls.torch_backend.models`)."""
        d_h = self.spec.d_h
        w0 = self.params["tau0_w"]
        z = jnp.swapaxes(h, 0, 1) @ w0[1 : 1 + d_h] + x.T[..., None] * w0[0]
        z = z + self.params["tau0_b"]
        if t is not None:
            z = z + jnp.reshape(t, (1, -1, 1)) * w0[1 + d_h]
        return z

    @staticmethod
    def from_rows(values: jax.Array) -> jax.Array:
        """(dim, batch) per-row values of :meth:`transformer_first`'s rows as (batch, dim)."""
        return values.T


_masks = functools.cache(made_masks)  # numpy, built once per spec and direction


def _with_time(x: jax.Array, t: jax.Array | None) -> jax.Array:
    if t is None:
        return x
    return jnp.concatenate([x, jnp.broadcast_to(jnp.reshape(t, (-1, 1)), (x.shape[0], 1))], -1)


def build(spec: ModelSpec, seed: int, device: jax.Device) -> _Model:
    if not isinstance(spec, HollowSpec | MLPSpec):
        raise TypeError(f"expected a HollowSpec or MLPSpec, got {type(spec).__name__}")
    params = {
        name: jax.device_put(jnp.asarray(value, dtype=spec.dtype), device)
        for name, value in init_params(spec, seed).items()
    }
    return (HollowNet if isinstance(spec, HollowSpec) else MLP)(spec, params)
