"""tau's value and tangent in one Pallas kernel: hollow_forward's k = 1 for the ``pallas`` variant.

The maths is :func:`impls.jax_backend.taylor.value_and_tangent`'s (its chunks' forward and
hand-written backward), here per tile of rows inside a kernel, so tau's 64-wide hidden values
stay on chip instead of going through memory several times per layer. Rows r = (dim, batch)
run dimension-major, as in the chunked version; each row is ``[x_i, h_i, (t)]``.

- Forward: one ``pallas_call`` over tiles of ``FWD_TILE`` rows writes f and D = d tau / dx_i.
- Backward (a ``jax.custom_vjp``: ``jax.grad`` cannot go through ``pallas_call``): a second
  ``pallas_call`` whose programs each take a block of rows, recompute its forward tile by tile
  (``BWD_TILE`` rows at a time) and write the gradients to the rows (x, h, t) and one partial
  of every weight gradient; the partials, (programs, ...), are summed afterwards. Two stages,
  no atomics, and the result does not depend on the order programs run in.

Pallas's GPU lowering is Triton's, which takes power-of-two shapes and dots at least 16 wide:
d_h and every hidden width, even 1, are zero-padded to a power of two >= 16 (a 1-wide layer
becomes a 16-wide dot, not a 1-wide one), the rows to whole blocks.
Padded units have zero weights in and out, padded rows zero cotangents, so neither adds to any
gradient; they are cut off afterwards. The dots take JAX's matmul precision, as XLA's do (TF32
on GPUs by default). On the CPU the kernels run in Pallas's interpreter (``interpret=True``):
slow, but the same code, which is how the tests check it; they also lower them for CUDA.

jax 0.11 deprecates Pallas's Triton backend (``DeprecationWarning`` "The Pallas Triton backend
is deprecated ...", deprecation id ``jax-pallas-triton``, raised at every lowering). Its
replacement, Mosaic GPU, is deprecated through ``pallas_call`` too (``jax-pallas-call-mgpu``:
its kernels are written for ``plgpu.kernel``, with warpgroup-sized tiles and explicit copies),
so no ``pallas_call`` path on a GPU is free of a deprecation. These kernels stay on Triton and
filter exactly that warning, once, when a kernel is first built for a GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from impls.jax_backend import taylor

# Rows per program and warps per kernel. A tile's hidden values live in registers: ptxas
# (sm_90, the kernels' Triton IR compiled by triton 3.8; 64-wide layers, d_h 16) reports for
# the forward 8 KB of spills at 128 rows on 4 warps, 1.6 KB at 64 rows on 8, none at 32 rows
# on 8 (nor at 16 rows), at "highest" precision and with TF32. The backward spills at every
# size tried: least at 16 rows on 8 warps (180 bytes at "highest", 1.1 KB with TF32; 3 KB at
# the former 32 rows on 4), more at 32 rows or 16 warps.
FWD_TILE = 32  # rows per forward program
FWD_WARPS = 8
BWD_TILE = 16  # rows per backward step
BWD_WARPS = 8
MAX_PROGRAMS = 1024  # backward programs at most: each writes one partial per weight gradient
MIN_WIDTH = 16  # Triton's smallest dot dimension
# A None in a block shape squeezes the dimension away; newer JAX names that pl.squeezed.
_SQUEEZED = getattr(pl, "squeezed", None)
# jax 0.11's warning at every lowering through Triton (see the module's docstring).
TRITON_DEPRECATION = "The Pallas Triton backend is deprecated"


def _compiler_params(num_warps: int):
    """Lower through Triton (JAX's GPU default is Mosaic GPU, whose copies need other shapes);
    the interpreter ignores this."""
    return pl_triton.CompilerParams(num_warps=num_warps)


@functools.cache
def _filter_triton_deprecation() -> None:
    """Ignore jax 0.11's TRITON_DEPRECATION, only that message and only as a
    DeprecationWarning, for the rest of the process. It is raised when the jit around the
    kernel lowers, after value_and_tangent has returned, so a filter scoped to the call would
    not see it. Installed once, the first time a kernel is built for a GPU."""
    warnings.filterwarnings(
        "ignore", message=re.escape(TRITON_DEPRECATION), category=DeprecationWarning
    )


class _Rows(NamedTuple):
    """Per-row inputs, each (rows, width): x (1), h (d_h padded), t (1) or None."""

    x: jax.Array
    h: jax.Array
    t: jax.Array | None


class _Tau(NamedTuple):
    """tau's weights, padded. First layer split by input: w0x, w0t (1, H1), w0h (d_h, H1) and
    b0 (1, H1); then (W, b) from each hidden layer to the next, (H_j, H_j+1) and (1, H_j+1);
    wl (1, H_L), the output layer's only column, as a row (its bias is added outside)."""

    w0x: jax.Array
    w0h: jax.Array
    b0: jax.Array
    w0t: jax.Array | None
    mids: tuple[tuple[jax.Array, jax.Array], ...]
    wl: jax.Array


@dataclasses.dataclass(frozen=True)
class _Config:
    """What the kernels are specialised to (hashable: a static argument)."""

    activation: str
    fwd_tile: int
    bwd_tile: int
    block_rows: int  # rows per backward program: bwd_tile times a power of two
    interpret: bool


def value_and_tangent(
    net, x: jax.Array, h: jax.Array, t: jax.Array | None, *, interpret: bool | None = None
) -> tuple[jax.Array, jax.Array]:
    """(tau, d tau / dx_i) at h held fixed, each (batch, dim), from x (batch, dim), h (batch,
    dim, d_h) and t (None, a scalar or (batch,)): :func:`taylor.value_and_tangent`'s result.

    ``interpret``: run the kernels in Pallas's interpreter (None: where x lives, or JAX's
    default backend for a traced x, is a CPU)."""
    _check(net)
    spec = net.spec
    batch, dim = x.shape
    n = batch * dim
    tv = None
    if t is not None:
        tv = jnp.tile(jnp.broadcast_to(jnp.reshape(t, (-1,)), (batch,)), dim)[:, None]
    rows = _Rows(x.T.reshape(n, 1), jnp.swapaxes(h, 0, 1).reshape(n, spec.d_h), tv)
    config = _config(spec.activation, n, _on_cpu(x) if interpret is None else interpret)
    padded = n + -n % max(config.fwd_tile, config.block_rows)
    # x and t stay one column wide (they only scale a row), h's columns feed a dot.
    rows = _Rows(
        _pad(rows.x, padded, 1),
        _pad(rows.h, padded, _pad_width(spec.d_h)),
        None if tv is None else _pad(rows.t, padded, 1),
    )
    f, deriv = _fused(config, _weights(net), rows)
    bias = net.params[f"tau{len(spec.trans_hidden)}_b"][0]
    f, deriv = (f[:n, 0] + bias).reshape(dim, batch), deriv[:n, 0].reshape(dim, batch)
    return net.from_rows(f), net.from_rows(deriv)


def _check(net) -> None:
    """Raise ValueError naming what the kernel does not support."""
    spec = getattr(net, "spec", None)
    if not hasattr(net, "transformer_first"):
        raise ValueError(f"the fused tau kernel needs a HollowNet, got {type(spec).__name__}")
    if not spec.trans_hidden:
        raise ValueError("the fused tau kernel needs a hidden layer in tau (trans_hidden is ())")
    if spec.activation not in taylor._DERIVS:
        raise ValueError(f"the fused tau kernel has no activation {spec.activation!r}")


def _on_cpu(x: jax.Array) -> bool:
    if isinstance(x, jax.core.Tracer):
        return jax.default_backend() == "cpu"
    return all(d.platform == "cpu" for d in x.devices())


def _config(activation: str, n: int, interpret: bool) -> _Config:
    """Tiles for n rows: the backward's blocks grow by powers of two past MAX_PROGRAMS tiles."""
    tiles = pl.cdiv(n, BWD_TILE)
    per_block = pl.next_power_of_2(pl.cdiv(tiles, MAX_PROGRAMS))
    return _Config(activation, FWD_TILE, BWD_TILE, BWD_TILE * per_block, interpret)


def _pad_width(w: int) -> int:
    """A width a dot takes, d_h's or a hidden layer's: a power of two, MIN_WIDTH or more."""
    return max(MIN_WIDTH, pl.next_power_of_2(w))


def _pad(a: jax.Array, rows: int, cols: int) -> jax.Array:
    return jnp.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))


def _weights(net) -> _Tau:
    """tau's weights as :class:`_Tau`, every width padded (see the module's docstring)."""
    spec, p = net.spec, net.params
    d_h, n_hidden = spec.d_h, len(spec.trans_hidden)
    widths = [_pad_width(w) for w in spec.trans_hidden]
    w0, b0 = p["tau0_w"], p["tau0_b"][None]
    first = functools.partial(_pad, rows=1, cols=widths[0])
    mids = tuple(
        (
            _pad(p[f"tau{j}_w"], widths[j - 1], widths[j]),
            _pad(p[f"tau{j}_b"][None], 1, widths[j]),
        )
        for j in range(1, n_hidden)
    )
    return _Tau(
        w0x=first(w0[:1]),
        w0h=_pad(w0[1 : 1 + d_h], _pad_width(d_h), widths[0]),
        b0=first(b0),
        w0t=first(w0[1 + d_h : 2 + d_h]) if spec.time_dependent else None,
        mids=mids,
        wl=_pad(p[f"tau{n_hidden}_w"].T, 1, widths[-1]),
    )


# --- the maths of one tile ------------------------------------------------------------------


def _hidden(activation: str, z: jax.Array, zt: jax.Array) -> tuple[jax.Array, ...]:
    """A hidden layer's (y, tangent, a'(z), a''(z), zt) from its pre-activation z (rows, H)
    and z's tangent zt (rows, H), or (1, H) in the first layer, where it is w0x for every row."""
    y = taylor._act(activation)(z)
    s, s2 = taylor._DERIVS[activation](z, y)
    return y, s * zt, s, s2, zt


def _tile_forward(activation: str, w: _Tau, rows: _Rows):
    """(f, D), each (rows, 1), less the output bias, and every hidden layer's saved values."""
    z = jnp.dot(rows.h, w.w0h) + rows.x * w.w0x + w.b0
    if rows.t is not None:
        z = z + rows.t * w.w0t
    saved = [_hidden(activation, z, w.w0x)]
    for weight, bias in w.mids:
        y, tan = saved[-1][:2]
        saved.append(_hidden(activation, jnp.dot(y, weight) + bias, jnp.dot(tan, weight)))
    y, tan = saved[-1][:2]
    return _row_sum(y * w.wl), _row_sum(tan * w.wl), saved


def _tile_backward(activation: str, w: _Tau, rows: _Rows, gf: jax.Array, gd: jax.Array):
    """(the rows' gradients as :class:`_Rows`, this tile's weight gradients as :class:`_Tau`)
    from the cotangents gf, gd (rows, 1) of f and D; the tile's forward is recomputed."""
    _, _, saved = _tile_forward(activation, w, rows)
    y, tan = saved[-1][:2]
    g_wl = _col_sum(y * gf + tan * gd)
    gz, gzt = _through_activation(saved[-1], gf * w.wl, gd * w.wl)
    g_mids = []
    for (weight, _), layer in zip(reversed(w.mids), reversed(saved[:-1]), strict=True):
        y, tan = layer[:2]
        g_mids.append((jnp.dot(y.T, gz) + jnp.dot(tan.T, gzt), _col_sum(gz)))
        gz, gzt = _through_activation(layer, jnp.dot(gz, weight.T), jnp.dot(gzt, weight.T))
    # zt = w0x in the first layer, so w0x also collects the tangent's cotangent.
    g = _Tau(
        w0x=_col_sum(rows.x * gz + gzt),
        w0h=jnp.dot(rows.h.T, gz),
        b0=_col_sum(gz),
        w0t=None if rows.t is None else _col_sum(rows.t * gz),
        mids=tuple(reversed(g_mids)),
        wl=g_wl,
    )
    g_t = None if rows.t is None else _row_sum(gz * w.w0t)
    return _Rows(_row_sum(gz * w.w0x), jnp.dot(gz, w.w0h.T), g_t), g


def _through_activation(layer, gy: jax.Array, gt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cotangents of (z, zt) from those of (y, tangent): y = a(z), tangent = a'(z) zt."""
    _, _, s, s2, zt = layer
    return gy * s + gt * zt * s2, gt * s


def _row_sum(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=1, keepdims=True)


def _col_sum(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=0, keepdims=True)


# --- the kernels ----------------------------------------------------------------------------


def _load(refs):
    return jax.tree.map(lambda r: r[...], refs)


def _forward_kernel(config: _Config, rows: _Rows, w: _Tau, f_ref, d_ref) -> None:
    f, deriv, _ = _tile_forward(config.activation, _load(w), _load(rows))
    f_ref[...], d_ref[...] = f, deriv


def _backward_kernel(config: _Config, rows: _Rows, gf, gd, w: _Tau, g_rows: _Rows, g_w: _Tau):
    """One block of rows, a tile at a time; the weight gradients summed over its tiles."""
    weights = _load(w)

    def step(i, acc):
        tile = pl.ds(pl.multiple_of(i * config.bwd_tile, config.bwd_tile), config.bwd_tile)
        at = jax.tree.map(lambda r: r[tile, :], (rows, gf, gd))
        got, g = _tile_backward(config.activation, weights, *at)
        for ref, value in zip(jax.tree.leaves(g_rows), jax.tree.leaves(got), strict=True):
            ref[tile, :] = value
        return jax.tree.map(jnp.add, acc, g)

    zeros = jax.tree.map(jnp.zeros_like, weights)
    acc = jax.lax.fori_loop(0, config.block_rows // config.bwd_tile, step, zeros)
    for ref, value in zip(jax.tree.leaves(g_w), jax.tree.leaves(acc), strict=True):
        ref[...] = value


def _row_spec(tile: int, a: jax.Array) -> pl.BlockSpec:
    return pl.BlockSpec((tile, a.shape[1]), lambda i: (i, 0))


def _whole_spec(a: jax.Array) -> pl.BlockSpec:
    return pl.BlockSpec(a.shape, lambda i: (0,) * a.ndim)


def _partial_spec(a: jax.Array) -> pl.BlockSpec:
    """One program's slice of a (programs, ...) array of partial sums."""
    return pl.BlockSpec((_SQUEEZED, *a.shape), lambda i: (i,) + (0,) * a.ndim)


def _shape(a: jax.Array, programs: int | None = None) -> jax.ShapeDtypeStruct:
    """a's shape and dtype, with a leading (programs,) if given."""
    lead = () if programs is None else (programs,)
    return jax.ShapeDtypeStruct((*lead, *a.shape), a.dtype)


def _forward(config: _Config, w: _Tau, rows: _Rows) -> tuple[jax.Array, jax.Array]:
    """(f, D) over all (padded) rows, each (rows, 1)."""
    n = rows.x.shape[0]
    out = _shape(rows.x)
    return pl.pallas_call(
        functools.partial(_forward_kernel, config),
        out_shape=(out, out),
        grid=(n // config.fwd_tile,),
        in_specs=[
            jax.tree.map(functools.partial(_row_spec, config.fwd_tile), rows),
            jax.tree.map(_whole_spec, w),
        ],
        out_specs=(_row_spec(config.fwd_tile, out),) * 2,
        interpret=config.interpret,
        compiler_params=_compiler_params(FWD_WARPS),
        name="fused_tau_forward",
    )(rows, w)


def _backward(config: _Config, w: _Tau, rows: _Rows, gf: jax.Array, gd: jax.Array):
    """(the rows' gradients, each weight's partial gradients (programs, ...))."""
    programs = rows.x.shape[0] // config.block_rows
    row_spec = functools.partial(_row_spec, config.block_rows)
    return pl.pallas_call(
        functools.partial(_backward_kernel, config),
        out_shape=(jax.tree.map(_shape, rows), jax.tree.map(lambda a: _shape(a, programs), w)),
        grid=(programs,),
        in_specs=[
            jax.tree.map(row_spec, rows),
            row_spec(gf),
            row_spec(gd),
            jax.tree.map(_whole_spec, w),
        ],
        out_specs=(jax.tree.map(row_spec, rows), jax.tree.map(_partial_spec, w)),
        interpret=config.interpret,
        compiler_params=_compiler_params(BWD_WARPS),
        name="fused_tau_backward",
    )(rows, gf, gd, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(config: _Config, w: _Tau, rows: _Rows) -> tuple[jax.Array, jax.Array]:
    if not config.interpret:
        _filter_triton_deprecation()
    return _forward(config, w, rows)


def _fused_fwd(config, w, rows):
    if not config.interpret:
        _filter_triton_deprecation()
    return _forward(config, w, rows), (w, rows)


def _fused_bwd(config, residuals, cotangents):
    w, rows = residuals
    g_rows, partials = _backward(config, w, rows, *cotangents)
    return jax.tree.map(lambda p: p.sum(0), partials), g_rows


_fused.defvjp(_fused_fwd, _fused_bwd)
