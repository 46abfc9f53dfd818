"""The fused tau kernels (issue 16): value, tangent and every gradient against float64 references.

Each backend's fused ``value_and_tangent`` is checked, in float32, against its own
``taylor.value_and_tangent`` in float64 on the same weights (that one is checked against dense
autodiff in test_gradients.py and test_operators.py). Without a GPU the kernels run in their
interpreters (tests/conftest.py sets ``TRITON_INTERPRET=1``), so the models are small.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from impls import HollowSpec
from impls.spec import ACTIVATIONS

# float32 kernels against float64: a few units in float32's last place, through three layers.
RTOL, ATOL = 2e-5, 2e-5


def _spec(activation: str, time_dependent: bool) -> HollowSpec:
    """Widths that are not powers of two (the kernels pad them), two hidden layers."""
    return HollowSpec(
        dim=5,
        d_h=3,
        cond_hidden=(4,),
        trans_hidden=(20, 24),
        activation=activation,
        time_dependent=time_dependent,
        dtype="float32",
    )


def _close(got, want, what: str) -> None:
    """float32 ``got`` against float64 ``want``, relative to want's largest entry (nonzero)."""
    got, want = got.detach().cpu().double().numpy(), want.detach().cpu().numpy()
    scale = np.abs(want).max()
    assert scale > 0, f"{what}: a zero reference checks nothing"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * scale, err_msg=what)


# --- torch: Triton ---------------------------------------------------------------------------


class TestTriton:
    """impls/torch_backend/fused_tau.py, the torch ``triton`` variant's kernels."""

    @pytest.fixture(autouse=True)
    def _modules(self):
        torch = pytest.importorskip("torch")
        pytest.importorskip("triton")
        from impls import load_backend
        from impls.torch_backend import fused_tau, taylor

        self.torch, self.fused_tau, self.taylor = torch, fused_tau, taylor
        # Compiled on the GPU where there is one (conftest sets TRITON_INTERPRET=1 only where
        # there is none), else in the interpreter.
        self.device = "cuda:0" if torch.cuda.is_available() else "cpu"
        self.backend = load_backend("torch", self.device)

    def _inputs(self, spec: HollowSpec, batch: int, seed: int):
        """x (batch, dim), h (batch, dim, d_h), t (batch,) or None, cotangents of f and D."""
        torch, gen = self.torch, np.random.default_rng(seed)

        def draw(*shape):
            return torch.as_tensor(gen.standard_normal(shape), device=self.device)

        t = draw(batch) if spec.time_dependent else None
        return draw(batch, spec.dim), draw(batch, spec.dim, spec.d_h), t, draw(batch, spec.dim), \
            draw(batch, spec.dim)  # fmt: skip

    def _value_and_grads(self, fn, net, x, h, t, g_f, g_d, dtype):
        """f, D and the gradients of sum(g_f f + g_D D) to x, h, t and every tau weight."""
        torch = self.torch
        inputs = [v.to(dtype).requires_grad_() for v in (x, h) + ((t,) if t is not None else ())]
        weights = [p for name, p in net.params.items() if name.startswith("tau")]
        f, deriv = fn(net, inputs[0], inputs[1], inputs[2] if t is not None else None)
        loss = (f * g_f.to(dtype)).sum() + (deriv * g_d.to(dtype)).sum()
        grads = torch.autograd.grad(loss, inputs + weights)
        names = ["x", "h", *(["t"] if t is not None else [])]
        names += [name for name in net.params if name.startswith("tau")]
        return {"f": f, "D": deriv, **dict(zip(names, grads, strict=True))}

    # 30 samples x 5 dimensions = 150 rows: no multiple of the interpreter's 16-row tile, and
    # more than one backward program's range (128 rows), so the partial sums have two slots.
    @pytest.mark.parametrize("time_dependent", [False, True], ids=["autonomous", "timed"])
    @pytest.mark.parametrize("activation", ACTIVATIONS)
    def test_value_tangent_and_gradients_match_float64(self, activation, time_dependent):
        self._check_against_float64(_spec(activation, time_dependent))

    @pytest.mark.parametrize(
        ("d_h", "trans_hidden"), [(1, (1, 1)), (3, (1, 20)), (1, (24, 1))], ids=str
    )
    def test_narrow_layers_match_float64(self, d_h, trans_hidden):
        """Layers (and d_h) narrower than tl.dot's 16 run as 16-wide dots on zero padding."""
        spec = dataclasses.replace(_spec("tanh", True), d_h=d_h, trans_hidden=trans_hidden)
        sizes = self.fused_tau._shape("tanh", 150, 30, d_h, self.torch.empty(trans_hidden), True)
        assert min(sizes["PH"], sizes["P1"], sizes["P2"]) == 16
        self._check_against_float64(spec)

    def _check_against_float64(self, spec: HollowSpec) -> None:
        activation, time_dependent = spec.activation, spec.time_dependent
        net = self.backend.build(spec, seed=3)
        x, h, t, g_f, g_d = self._inputs(spec, batch=30, seed=4)
        torch = self.torch
        got = self._value_and_grads(
            self.fused_tau.value_and_tangent, net, x, h, t, g_f, g_d, torch.float32
        )
        net64 = self.backend.build(spec, seed=3).double()
        want = self._value_and_grads(
            self.taylor.value_and_tangent, net64, x, h, t, g_f, g_d, torch.float64
        )
        assert set(got) == set(want)
        for name in want:
            assert got[name].shape == want[name].shape, name
            _close(got[name], want[name], f"{name} ({activation}, t={time_dependent})")

    def test_the_variant_trains_like_eager(self):
        """The torch ``triton`` variant's fair train step (hollow_forward, k = 1: the loss
        on f and the divergence from one pass, one backward) gives eager's loss and the
        gradient of every parameter, the conditioner's included."""
        from impls.torch_backend.variants import torch_variant

        torch = self.torch
        spec = _spec("tanh", time_dependent=True)
        net = self.backend.build(spec, seed=5)
        x = self._inputs(spec, batch=9, seed=6)[0].float()
        t = torch.tensor(0.3, device=self.device)

        def step(x):
            net.zero_grad(set_to_none=True)
            f, div = self.backend.value_and_divergence(net, x, method="hollow_forward", t=t)
            loss = (f * f).mean() + div.mean()
            loss.backward()
            return loss.detach(), {name: p.grad.clone() for name, p in net.params.items()}

        loss, grads = step(x)
        fused, _ = torch_variant(step, (x,), "triton")
        fused_loss, fused_grads = fused(x)
        assert fused_grads.keys() == grads.keys()
        _close(fused_loss, loss.double(), "loss")
        for name, g in grads.items():
            assert g.abs().max() > 0, name
            _close(fused_grads[name], g.double(), name)

    @pytest.mark.parametrize(
        ("change", "match"),
        [
            ({"trans_hidden": (8,)}, "exactly 2 hidden layers"),
            ({"trans_hidden": (8, 8, 8)}, "exactly 2 hidden layers"),
            ({"dtype": "float64"}, "float32 only"),
        ],
    )
    def test_unsupported_models_raise(self, change, match):
        spec = dataclasses.replace(_spec("tanh", False), **change)
        net = self.backend.build(spec)
        x, h, t, _, _ = self._inputs(spec, batch=2, seed=0)
        x, h = x.to(net.params["tau0_w"].dtype), h.to(net.params["tau0_w"].dtype)
        with pytest.raises(ValueError, match=match):
            self.fused_tau.value_and_tangent(net, x, h, t)

    def test_one_configuration_under_the_switch(self, monkeypatch):
        """HOLLOWBENCH_TRITON_CONFIGS=N keeps the first N configurations (the tests run with
        1, so a GPU compiles one per kernel); unset, all; in the interpreter always one."""
        ft = self.fused_tau
        assert len(ft._forward_kernel.configs) == len(ft._backward_kernel.configs) == 1
        monkeypatch.setattr(ft, "_INTERPRET", False)
        for choices in (ft.FORWARD_CONFIGS, ft.BACKWARD_CONFIGS):
            monkeypatch.setenv(ft.CONFIGS_ENV, "1")
            [one] = ft._configs(choices)
            assert (one.kwargs["BLOCK"], one.num_warps) == choices[0]
            monkeypatch.setenv(ft.CONFIGS_ENV, "2")
            assert len(ft._configs(choices)) == 2
            monkeypatch.delenv(ft.CONFIGS_ENV)
            assert [(c.kwargs["BLOCK"], c.num_warps) for c in ft._configs(choices)] == list(choices)
            for bad in ("0", "all"):
                monkeypatch.setenv(ft.CONFIGS_ENV, bad)
                with pytest.raises(ValueError, match=ft.CONFIGS_ENV):
                    ft._configs(choices)
        monkeypatch.setattr(ft, "_INTERPRET", True)
        monkeypatch.delenv(ft.CONFIGS_ENV)
        assert len(ft._configs(ft.FORWARD_CONFIGS)) == 1

    def test_tuning_key_buckets_rows_and_holds_the_precision(self):
        """The autotuner keys on TUNE_KEY: row counts within one power of two share a choice,
        the next power of two and a change of matmul precision (TF32 or not) do not."""
        torch, ft = self.torch, self.fused_tau
        assert ft._forward_kernel.keys == ft._backward_kernel.keys == list(ft.TUNE_KEY)
        w1 = torch.empty(64, 64)

        def key(rows, precision="highest"):
            before = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(precision)
            try:
                return ft.tune_key(ft._shape("tanh", rows, 512, 16, w1, False))
            finally:
                torch.set_float32_matmul_precision(before)

        assert key(1100) == key(2000) == key(2048)
        assert key(2049) != key(2048)
        assert key(2000, "high") != key(2000)
        assert key(2000, "high") == key(1500, "medium")  # both TF32
