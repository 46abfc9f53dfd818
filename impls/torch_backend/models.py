"""PyTorch HollowNet and MLP (``nn.Module``s), built from :func:`impls.spec.init_params`.

Called as ``net(x)`` or ``net(t, x)``; x is (batch, dim), t a scalar or (batch,). A HollowNet
also exposes ``conditioner(x, t) -> h`` (batch, dim, d_h) and ``transformer(x, h, t) -> f``
(batch, dim), which the hollow operators use.
"""

from __future__ import annotations

import torch
from torch import nn

from impls.spec import HollowSpec, MLPSpec, ModelSpec, dense, init_params, made_masks, split_args


def _softplus(z: torch.Tensor) -> torch.Tensor:
    # The JAX backend's formula; torch's own softplus turns linear above 20, a 2e-9 difference.
    return z.clamp_min(0) + torch.log1p(torch.exp(-z.abs()))


ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": _softplus,
    "sin": torch.sin,
}


class _Model(nn.Module):
    def __init__(self, spec: ModelSpec, seed: int = 0, device="cpu"):
        super().__init__()
        self.spec = spec
        dtype = getattr(torch, spec.dtype)
        self.params = nn.ParameterDict(
            {
                # torch.tensor copies: init_params' arrays are shared and read-only.
                name: nn.Parameter(torch.tensor(value, dtype=dtype, device=device))
                for name, value in init_params(spec, seed).items()
            }
        )
        self.act = ACTIVATIONS[spec.activation]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        t, x = split_args(args, self.spec.time_dependent)
        if t is not None:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return self.evaluate(x, t)


class MLP(_Model):
    """Plain MLP R^d -> R^d; the dense baseline."""

    def evaluate(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return dense(self.params, self.act, "mlp", _with_time(x, t), len(self.spec.hidden) + 1)


class HollowNet(_Model):
    """f_i(x) = tau([x_i, h_i, t]) with h_i = c_i(x_{-i}, t); see :class:`impls.spec.HollowSpec`."""

    def __init__(self, spec: HollowSpec, seed: int = 0, device="cpu"):
        super().__init__(spec, seed, device)
        if spec.conditioner == "made":
            for direction in ("fwd", "rev"):
                for j, mask in enumerate(made_masks(spec, direction)):
                    self.register_buffer(
                        f"mask_{direction}{j}", torch.as_tensor(mask, device=device)
                    )

    def evaluate(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(x, self.conditioner(x, t), t)

    def conditioner(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """h, shape (batch, dim, d_h); h[:, i] never depends on x[:, i]."""
        spec, batch = self.spec, x.shape[0]
        if spec.conditioner == "made":
            n = len(spec.cond_hidden) + 1
            masks = {
                dn: [getattr(self, f"mask_{dn}{j}") for j in range(n)] for dn in ("fwd", "rev")
            }
            z = sum(
                dense(self.params, self.act, f"made_{dn}", _with_time(x, t), n, masks[dn])
                for dn in ("fwd", "rev")
            )
            return self.act(z).reshape(batch, spec.dim, spec.d_h)
        w0 = self.params["cond0_w"]
        # Take x_i's own contribution back out instead of masking the (d_in, d, w) weight on
        # every call: O(batch*d*w) rather than O(d^2*w), and d h_i / d x_i is exactly zero.
        # The diagonal as a view: no index tensor to copy to the device (a CUDA graph
        # capture cannot copy from the host).
        own = w0[: spec.dim].diagonal(dim1=0, dim2=1).T  # (d, w)
        z = (_with_time(x, t) @ w0.flatten(1)).view(batch, spec.dim, -1)
        z = self.act(torch.addcmul(z + self.params["cond0_b"], x[..., None], own, value=-1))
        # The per-dimension layers run dimension-major, (d, batch, w): one batched matmul over
        # d, reading the (batch, d, w) first layer through a transposed view (no copy) and
        # writing contiguous blocks. h comes back as a (batch, d, d_h) view of them, which the
        # transformer reads in the same order, again without a copy.
        z = z.transpose(0, 1)
        for j in range(1, len(spec.cond_hidden) + 1):
            bias = self.params[f"cond{j}_b"][:, None, :]
            z = self.act(torch.baddbmm(bias, z, self.params[f"cond{j}_w"]))
        return z.transpose(0, 1)

    def transformer(
        self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """f, shape (batch, dim): one MLP shared by all dimensions, over rows [x_i, h_i, t]."""
        z = self.transformer_first(x, h, t)
        for j in range(1, len(self.spec.trans_hidden) + 1):
            z = torch.addmm(self.params[f"tau{j}_b"], self.act(z), self.params[f"tau{j}_w"])
        return self.from_rows(z[:, 0], x.shape[0])

    def transformer_first(
        self, x: torch.Tensor, h: torch.Tensor, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The transformer's first pre-activation over its rows, (dim * batch, width).

        Rows run dimension-major (row i * batch + b is sample b's dimension i), the order
        the conditioner writes h in. Split by input rather than over concatenated rows
        [x_i, h_i, t]: h's block is one matmul, x's column (and t's) a broadcast
        multiply-add, so no row copy is made. :meth:`from_rows` maps a per-row value back.
        """
        d_h = self.spec.d_h
        batch, dim = x.shape
        w0, b0 = self.params["tau0_w"], self.params["tau0_b"]
        z = torch.addmm(b0, h.transpose(0, 1).reshape(-1, d_h), w0[1 : 1 + d_h])
        z = torch.addcmul(z, x.T.reshape(-1, 1), w0[0])
        if t is not None:
            z = z.view(dim, batch, -1) + t.reshape(1, -1, 1) * w0[1 + d_h]
            z = z.view(dim * batch, -1)
        return z

    @staticmethod
    def from_rows(values: torch.Tensor, batch: int) -> torch.Tensor:
        """(dim * batch,) per-row values of :meth:`transformer_first`'s rows as (batch, dim)."""
        return values.view(-1, batch).T


def _with_time(x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        return x
    return torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1)], dim=-1)


def build(spec: ModelSpec, seed: int, device: str) -> _Model:
    if isinstance(spec, HollowSpec):
        return HollowNet(spec, seed, device)
    if isinstance(spec, MLPSpec):
        return MLP(spec, seed, device)
    raise TypeError(f"expected a HollowSpec or MLPSpec, got {type(spec).__name__}")
