"""Specs, the shared initialiser, analytic counts and matched MLPs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import SPECS, backend_or_skip

from impls import HollowSpec, MLPSpec, flop_matched_mlp, init_params, param_matched_mlp
from impls.spec import made_masks


def test_every_field_but_dim_has_a_default():
    spec = HollowSpec(dim=7, dtype="float64")
    assert spec.dim == 7 and spec.dtype == "float64"
    missing = [f.name for f in dataclasses.fields(HollowSpec) if f.default is dataclasses.MISSING]
    assert missing == ["dim"]
    assert MLPSpec(dim=3).hidden == (64, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dim = 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.5}, "dim"),
        ({"dim": 3, "conditioner": "dense"}, "conditioner"),
        ({"dim": 3, "activation": "relu"}, "activation"),
        ({"dim": 3, "dtype": "float16"}, "dtype"),
        ({"dim": 3, "trans_hidden": (8, 0)}, "trans_hidden"),
        ({"dim": 3, "d_h": 0}, "d_h"),
    ],
)
def test_bad_spec_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HollowSpec(**kwargs)


def test_init_is_deterministic_and_seeded():
    spec = SPECS["masked"]
    a, b, c = init_params(spec, 0), init_params(spec, 0), init_params(spec, 1)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["tau0_w"], c["tau0_w"])
    d = spec.dim
    assert np.all(a["cond0_w"][np.arange(d), np.arange(d)] == 0)


def test_init_is_cached_and_read_only(backend):
    """init_params is cached by (spec, seed) and hands out read-only arrays; a model built from
    them owns copies, so training it (in float64, where a shared buffer would be possible)
    leaves the cache untouched."""
    spec = SPECS["masked"]
    a, b = init_params(spec, 3), init_params(spec, 3)
    assert a is not b and all(a[n] is b[n] for n in a)
    assert not any(v.flags.writeable for v in a.values())
    with pytest.raises(ValueError, match="read-only"):
        a["tau0_w"][0, 0] = 1.0
    before = {n: v.copy() for n, v in a.items()}
    net = backend.build(spec, seed=3)
    if backend.name == "torch":
        import torch

        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    assert all(np.array_equal(init_params(spec, 3)[n], before[n]) for n in before)


@pytest.mark.parametrize("direction", ["fwd", "rev"])
def test_made_masks_are_strictly_ordered(direction):
    spec = HollowSpec(dim=5, conditioner="made", cond_hidden=(2, 3), d_h=2, time_dependent=True)
    reach = np.linalg.multi_dot([m.astype(int) for m in made_masks(spec, direction)])
    reach = reach[: spec.dim].reshape(spec.dim, spec.dim, spec.d_h).max(-1)  # (input j, output i)
    j, i = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    allowed = j < i if direction == "fwd" else j > i
    assert np.all(reach[~allowed] == 0)
    assert np.all(reach[allowed] > 0)  # every allowed input does reach its outputs


@pytest.mark.parametrize(
    "spec",
    [*SPECS.values(), MLPSpec(dim=5, hidden=(7, 3), time_dependent=True)],
    ids=lambda s: type(s).__name__,
)
def test_parameter_and_flop_counts(spec):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    T, J = backend_or_skip("torch"), backend_or_skip("jax")
    net = T.build(spec)
    assert sum(p.numel() for p in net.parameters()) == spec.n_params
    assert sum(int(np.prod(v.shape)) for v in J.build(spec).params.values()) == spec.n_params
    batch = 6
    x = torch.zeros(batch, spec.dim, dtype=getattr(torch, spec.dtype))
    args = (torch.tensor(0.5), x) if spec.time_dependent else (x,)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(*args)
    # The transformer's first layer takes its x column (and t's) as a broadcast multiply-add,
    # not a matmul: spec.flops counts them, torch's counter (matmuls only) does not.
    columns = 0
    if isinstance(spec, HollowSpec):
        columns = 2 * spec.dim * spec.trans_hidden[0] * (1 + spec.time_dependent)
    assert counter.get_total_flops() == batch * (spec.flops - columns)


@pytest.mark.parametrize("dim", [8, 128, 1024])
def test_matched_mlps_are_closest(dim):
    spec = HollowSpec(dim=dim)
    for match, cost in ((param_matched_mlp, "n_params"), (flop_matched_mlp, "flops")):
        mlp = match(spec)
        (width,) = set(mlp.hidden)
        target = getattr(spec, cost)
        gap = abs(getattr(mlp, cost) - target)
        for other in (width - 1, width + 1):
            if other >= 1:
                neighbour = dataclasses.replace(mlp, hidden=(other, other))
                assert gap <= abs(getattr(neighbour, cost) - target)
        assert mlp.matched == ("params" if cost == "n_params" else "flops")
        assert len(mlp.hidden) == 2 and mlp.dim == dim
