"""The speed goals (a)-(d), each a table of measured ratios per d and a verdict naming every d
where the goal was missed. A cell is a number, a not-run side's status, "noisy" where a side
was measured only noisily (left out of ratios and verdicts), or NaN where a side is missing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd

from impls import DENSE_METHODS, FUSED_BASE, HOLLOW_METHODS
from reports.tables import (
    AT_MOST_ONE,
    EXACT_DIVERGENCE,
    HUTCHINSON_1,
    NoData,
    Side,
    Target,
    cells,
    is_measured,
    pair_ratios,
)

# What a within-backend ratio holds fixed. (d) compares backends, whose precision settings
# are named differently ("high" against "tensorfloat32" for TF32), so it leaves precision out.
KEYS = ("backend", "device_id", "variant", "mode", "batch", "matmul_precision")
NOISY = "noisy"


@dataclass(frozen=True)
class Goal:
    """A goal, declared as data and reported like a :class:`~reports.tables.Table`: ``num`` over
    ``den`` matched on ``keys`` and d, bounded by ``target``; ``needs`` is the NoData message,
    ``relabel`` rewrites the numerator's rows before pairing, ``annotate(table, frame)`` adds a
    last column. ``build(frame)``: a row per key, a column per d, the target and the verdict."""

    key: str  # goal_<letter>_...
    title: str
    claim: str
    compared: str
    num: Side
    den: Side
    keys: tuple[str, ...]
    target: Target
    needs: str
    relabel: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    annotate: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame] | None = None
    section = "Speed goals"
    details = False

    def build(self, frame: pd.DataFrame) -> pd.DataFrame:
        num, den = _rows(self.num, frame), _rows(self.den, frame)
        num = self.relabel(num) if self.relabel else num
        if num.empty or den.empty:
            raise NoData(self.needs)
        pairs = pair_ratios(self.num.cells(num, self.keys), self.den.cells(den, self.keys))
        if pairs.empty:
            raise NoData(f"no matching pairs of points for goal ({self.key.split('_')[1]})")
        keys = [c for c in pairs.columns if c not in ("d", "ratio")]
        wide = pairs.set_index([*keys, "d"])["ratio"].unstack("d")
        table = wide.rename(columns=lambda d: f"d={d}").reset_index()
        table["target"] = self.target.label
        table["verdict"] = [_verdict(row, self.target) for _, row in wide.iterrows()]
        table = table.rename(columns={"device_id": "device"})
        return self.annotate(table, frame) if self.annotate else table

    __call__ = build


def _rows(side: Side, frame: pd.DataFrame) -> pd.DataFrame:
    """The side's points; a noisy one counts as not measured, with the status "noisy"."""
    rows = side.rows(frame)
    return rows.assign(status=rows["status"].mask(rows["noisy"], NOISY))


def _verdict(row: pd.Series, target: Target) -> str:
    """Every d of the row missed, not run or left out as noisy."""
    missed, unknown, noisy = [], [], []
    for d, value in row.items():
        if isinstance(value, str) and NOISY in value.split("/"):
            noisy.append(f"d={d}")
        elif isinstance(value, str):
            unknown.append(f"d={d} ({value})")
        elif target.verdict(value, d) == "not met":
            missed.append(f"d={d} ({value:.3g} vs {target.bound(d):g})")
    if missed:
        verdict = f"missed at {', '.join(missed)}"
    else:
        verdict = "met at every measured d" if any(map(is_measured, row)) else "not measured"
    verdict += f"; did not run at {', '.join(unknown)}" if unknown else ""
    return verdict + (f"; noisy, left out at {', '.join(noisy)}" if noisy else "")


TORCH_VARIANTS = Side(
    "divergence", HOLLOW_METHODS, ("hollownet",), {"backend": "torch"}, by=("method",)
)


def _fastest_variant(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Goal (d)'s last column: the fastest measured torch variant per device, mode, batch,
    method and d."""
    keys = ["device_id", "mode", "batch", "method", "d", "variant"]
    per = cells(_rows(TORCH_VARIANTS, frame), keys)
    measured = per[per.map(is_measured)].astype(float)
    best = measured.groupby(level=list(range(per.index.nlevels - 1))).idxmin()
    names = best.map(lambda index: index[-1])
    rows = table[["device", "mode", "batch", "method"]].itertuples(index=False)
    table["fastest torch variant"] = [_names_by_d(names, tuple(row)) for row in rows]
    return table


def _names_by_d(names: pd.Series, key: tuple) -> str:
    """'cudagraph' when one variant was fastest at every d, else 'd=8: eager, ...'."""
    try:
        over_d = names.xs(key, level=list(range(len(key))))
    except KeyError:
        return "—"
    if over_d.nunique() == 1:
        return str(over_d.iloc[0])
    return ", ".join(f"d={d}: {v}" for d, v in over_d.items())


def _as_base(rows: pd.DataFrame) -> pd.DataFrame:
    """A fused variant's points as its base variant's (FUSED_BASE), the method named
    "hollow_forward+triton": no Hutchinson step runs a fused tau, and the base variant's is the
    same step without the kernel. Likewise torch's compiled train steps as eager's, named
    "hollow_forward+compile": torch.compile cannot build a Hutchinson train step (AOTAutograd
    refuses its double backward), so each side runs in the best variant it has."""
    compiled_train = (rows["variant"] == "compile") & (rows["mode"] == "train")
    moved = rows["variant"].isin(FUSED_BASE) | compiled_train
    method = rows["method"].mask(moved, rows["method"] + "+" + rows["variant"])
    variant = rows["variant"].mask(compiled_train, "eager").replace(FUSED_BASE)
    return rows.assign(method=method, variant=variant)


# (a) each hollow method's divergence over Hutchinson-1 on the FLOP-matched MLP. Train steps
# pair only with steps of the same definition (the fair "value_and" step, or the older
# "separate_forward" one): a row per step.
goal_a = Goal(
    "goal_a_exact_vs_hutchinson",
    "Goal (a): exact divergence at the cost of one Hutchinson probe",
    "The hollow exact-divergence train step costs at most 1.0x the Hutchinson-1 train step on the "
    "FLOP-matched MLP, for every d from 8 to 4096, on a GPU, in both backends.",
    "Divergence workload: each hollow method's median time on the HollowNet over hutchinson "
    "(n_probes=1) on the FLOP-matched MLP, same backend, device, variant, mode and batch, one "
    "column per d; a fused variant (triton, pallas) and torch's compiled train step, which "
    "have no Hutchinson twin, pair with their base variant's, the method named "
    "'hollow_forward+triton', 'hollow_forward+compile'. The goal concerns train mode; eval "
    "rows show the operator alone. A train step's 'step' says how it is defined: 'value_and' "
    "is the fair step, f and the divergence from one pass (value_and_divergence), a loss on "
    "both, one backward; 'separate_forward' (results from before it) took the loss's f from a "
    "second net(x), which adds the same cost to both sides and pulls the ratio towards 1.",
    replace(EXACT_DIVERGENCE, by=("method",)),
    HUTCHINSON_1,
    (*KEYS, "step"),
    AT_MOST_ONE,
    "needs hollow divergence points and hutchinson-1 on the FLOP-matched MLP",
    relabel=_as_base,
)
# (b) the faster dense method over each hollow method, for d >= 128.
goal_b = Goal(
    "goal_b_dense_vs_hollow",
    "Goal (b): dense / hollow >= d/4 for d >= 128",
    "The exact hollow operator beats the dense diagonal by at least d/4 at every d >= 128.",
    "Divergence workload on the HollowNet: the faster of dense_loop and dense_vectorized over "
    "each hollow method, same backend, device, variant, mode and batch; the target is d/4 for "
    "each column's d.",
    Side("divergence", DENSE_METHODS, ("hollownet",), min_d=128, fastest="method"),
    replace(EXACT_DIVERGENCE, min_d=128, by=("method",), rename={"method": "hollow method"}),
    KEYS,
    Target(">= d/4", lambda d: d / 4, above=True),
    "needs dense and hollow divergence points at d >= 128",
)
# (c) D_dim^4 over D_dim^1, per hollow method.
goal_c = Goal(
    "goal_c_ddim_k4_vs_k1",
    "Goal (c): D_dim^4 costs at most 5x D_dim^1",
    "A k-th order dimension-wise derivative costs about k passes: cost(k=4) / cost(k=1) <= 5.",
    "ddim workload on the HollowNet: each hollow method's median time at k=4 over its time at "
    "k=1, same backend, device, variant, mode, batch and d.",
    Side("ddim", HOLLOW_METHODS, ("hollownet",), {"k": 4}, by=("method",)),
    Side("ddim", HOLLOW_METHODS, ("hollownet",), {"k": 1}, by=("method",)),
    KEYS,
    Target("<= 5", lambda d: 5.0),
    "needs hollow ddim points at k = 1 and k = 4",
)
# (d) the fastest torch variant over the fastest JAX one, per device, mode, batch and method.
goal_d = Goal(
    "goal_d_torch_vs_jax",
    "Goal (d): the best PyTorch variant within 1.5x of the best JAX one",
    "On a GPU the fastest PyTorch variant of each hollow method is within 1.5x of JAX's jit at "
    "every d.",
    "Divergence workload on the HollowNet: the fastest torch variant (eager, cudagraph, compile, "
    "triton) over the fastest JAX one (jit, pallas), per device, mode, batch, method and d; "
    "'fastest torch variant' names which one it was.",
    replace(TORCH_VARIANTS, fastest="variant"),
    replace(TORCH_VARIANTS, where={"backend": "jax"}, fastest="variant"),
    ("device_id", "mode", "batch"),
    Target("<= 1.5", lambda d: 1.5),
    "needs hollow divergence points from both backends",
    annotate=_fastest_variant,
)
GOALS = (goal_a, goal_b, goal_c, goal_d)
