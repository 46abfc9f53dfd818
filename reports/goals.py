"""The speed goals (a)-(d) the suite holds its implementations to, each a table of measured
ratios per d with a verdict, built from whatever points the inputs hold.

A ratio cell is a number, the status of a side that did not run ("oom", ...), "noisy" where a
side was measured only noisily (bench/SCHEMA.md ``noisy``), or NaN where the inputs lack a side.
Noisy points are left out of every ratio and verdict, and the verdict says where. The verdict
names every d where the goal was missed, so a miss can never hide in a wide table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from impls import DENSE_METHODS, HOLLOW_METHODS
from reports.tables import Cell, NoData, Table, cells, ratio

# What a within-backend ratio holds fixed. (d) compares backends, whose precision settings
# are named differently ("high" against "tensorfloat32" for TF32), so it leaves precision out.
KEYS = ["backend", "device_id", "variant", "mode", "batch", "matmul_precision"]


NOISY = "noisy"


def _rows(frame: pd.DataFrame, workload: str, methods: Sequence[str], model: str) -> pd.DataFrame:
    """The matching points; a noisy one counts as not measured, with the status "noisy"."""
    rows = frame[
        frame["workload"].eq(workload)
        & frame["method"].isin(methods)
        & frame["model"].eq(model)
        & frame["d"].notna()
    ]
    if "noisy" not in rows:
        return rows
    return rows.assign(status=rows["status"].mask(rows["noisy"].fillna(False).astype(bool), NOISY))


def _best(values: pd.Series) -> Cell:
    """The fastest measured cell, else the statuses of those that did not run."""
    measured = [v for v in values if not isinstance(v, str) and pd.notna(v)]
    if measured:
        return min(measured)
    statuses = sorted({v for v in values if isinstance(v, str)})
    return "/".join(statuses) if statuses else float("nan")


def _fastest(per: pd.Series) -> pd.Series:
    """Per index but its last level (e.g. per key over methods): the fastest cell."""
    return per.groupby(level=list(range(per.index.nlevels - 1)), dropna=False).agg(_best)


def _ratios(num: pd.Series, den: pd.Series) -> pd.DataFrame:
    """num / den matched on the index levels both have; a level only one side has (e.g. the
    method) stays a column. Long format, one row per pair, the ratio in ``ratio``."""
    left, right = num.rename("num").reset_index(), den.rename("den").reset_index()
    on = [c for c in right.columns if c in left.columns]
    both = left.merge(right, on=on, how="inner")
    both["ratio"] = [ratio(a, b) for a, b in zip(both["num"], both["den"], strict=True)]
    return both.drop(columns=["num", "den"])


def _by_d(pairs: pd.DataFrame, goal: str, target: Callable[[int], float], label: str, above: bool):
    """One row per key, one column per d, and the verdict against ``target(d)``: a floor
    when ``above``, else a ceiling."""
    if pairs.empty:
        raise NoData(f"no matching pairs of points for goal ({goal})")
    keys = [c for c in pairs.columns if c not in ("d", "ratio")]
    wide = pairs.set_index([*keys, "d"])["ratio"].unstack("d")
    out = wide.rename(columns=lambda d: f"d={d}").reset_index()
    out["target"] = label
    out["verdict"] = [_verdict(row, target, above) for _, row in wide.iterrows()]
    return out.rename(columns={"device_id": "device"})


def _verdict(row: pd.Series, target: Callable[[int], float], above: bool) -> str:
    missed, unknown, noisy = [], [], []
    for d, value in row.items():
        if isinstance(value, str) and NOISY in value.split("/"):
            noisy.append(f"d={d}")
        elif isinstance(value, str):
            unknown.append(f"d={d} ({value})")
        elif pd.notna(value) and ((value < target(d)) if above else (value > target(d))):
            missed.append(f"d={d} ({value:.3g} vs {target(d):g})")
    measured = [v for v in row if not isinstance(v, str) and pd.notna(v)]
    if missed:
        verdict = f"missed at {', '.join(missed)}"
    else:
        verdict = "met at every measured d" if measured else "not measured"
    verdict += f"; did not run at {', '.join(unknown)}" if unknown else ""
    return verdict + (f"; noisy, left out at {', '.join(noisy)}" if noisy else "")


def goal_a(frame: pd.DataFrame) -> pd.DataFrame:
    """(a) each hollow method's divergence over Hutchinson-1 on the FLOP-matched MLP."""
    exact = _rows(frame, "divergence", HOLLOW_METHODS, "hollownet")
    hutch = _rows(frame, "divergence", ["hutchinson"], "mlp_flop_matched")
    hutch = hutch[hutch["n_probes"].eq(1).fillna(False)]
    if exact.empty or hutch.empty:
        raise NoData("needs hollow divergence points and hutchinson-1 on the FLOP-matched MLP")
    # Train steps pair only with steps of the same definition (the fair "value_and" step, or
    # the older "separate_forward" one): a row per step.
    keys = [*KEYS, "step"]
    pairs = _ratios(cells(exact, [*keys, "method", "d"]), cells(hutch, [*keys, "d"]))
    return _by_d(pairs, "a", lambda d: 1.0, "<= 1", above=False)


def goal_b(frame: pd.DataFrame) -> pd.DataFrame:
    """(b) the faster dense method over each hollow method, for d >= 128."""
    frame = frame[frame["d"].ge(128).fillna(False)]
    dense = _rows(frame, "divergence", DENSE_METHODS, "hollownet")
    exact = _rows(frame, "divergence", HOLLOW_METHODS, "hollownet")
    if dense.empty or exact.empty:
        raise NoData("needs dense and hollow divergence points at d >= 128")
    exact_cells = cells(exact, [*KEYS, "method", "d"]).rename_axis(
        index={"method": "hollow method"}
    )
    pairs = _ratios(_fastest(cells(dense, [*KEYS, "d", "method"])), exact_cells)
    return _by_d(pairs, "b", lambda d: d / 4, ">= d/4", above=True)


def goal_c(frame: pd.DataFrame) -> pd.DataFrame:
    """(c) D_dim^4 over D_dim^1, per hollow method."""
    ddim = _rows(frame, "ddim", HOLLOW_METHODS, "hollownet")
    k4, k1 = (ddim[ddim["k"].eq(k).fillna(False)] for k in (4, 1))
    if k4.empty or k1.empty:
        raise NoData("needs hollow ddim points at k = 1 and k = 4")
    keys = [*KEYS, "method", "d"]
    return _by_d(_ratios(cells(k4, keys), cells(k1, keys)), "c", lambda d: 5.0, "<= 5", False)


def goal_d(frame: pd.DataFrame) -> pd.DataFrame:
    """(d) the fastest torch variant over JAX jit, per device, mode, batch and method."""
    rows = _rows(frame, "divergence", HOLLOW_METHODS, "hollownet")
    torch, jax = rows[rows["backend"].eq("torch")], rows[rows["backend"].eq("jax")]
    if torch.empty or jax.empty:
        raise NoData("needs hollow divergence points from both backends")
    keys = ["device_id", "mode", "batch", "method", "d"]
    per_variant = cells(torch, [*keys, "variant"])
    pairs = _ratios(_fastest(per_variant), cells(jax, keys))
    table = _by_d(pairs, "d", lambda d: 1.5, "<= 1.5", above=False)
    names = _fastest_names(per_variant)
    table["fastest torch variant"] = [
        _names_by_d(names, tuple(row))
        for row in table[["device", *keys[1:-1]]].itertuples(index=False)
    ]
    return table


def _fastest_names(per: pd.Series) -> pd.Series:
    """Per index but its last level: the name of the fastest measured value of that level."""
    measured = per[per.map(lambda v: not isinstance(v, str) and pd.notna(v))].astype(float)
    best = measured.groupby(level=list(range(per.index.nlevels - 1))).idxmin()
    return best.map(lambda index: index[-1])


def _names_by_d(names: pd.Series, key: tuple) -> str:
    """For one row of goal (d): 'cudagraph' when one variant was fastest at every d, else
    'd=8: eager, ...'."""
    try:
        over_d = names.xs(key, level=list(range(len(key))))
    except KeyError:
        return "—"
    if over_d.nunique() == 1:
        return str(over_d.iloc[0])
    return ", ".join(f"d={d}: {v}" for d, v in over_d.items())


GOALS: tuple[Table, ...] = (
    Table(
        "goal_a_exact_vs_hutchinson",
        "Goal (a): exact divergence at the cost of one Hutchinson probe",
        "The hollow exact-divergence train step costs at most 1.0x the Hutchinson-1 train step "
        "on the FLOP-matched MLP, for every d from 8 to 4096, on a GPU, in both backends.",
        "Divergence workload: each hollow method's median time on the HollowNet over "
        "hutchinson (n_probes=1) on the FLOP-matched MLP, same backend, device, variant, mode "
        "and batch, one column per d. The goal concerns train mode; eval rows show the "
        "operator alone. A train step's 'step' says how it is defined: 'value_and' is the fair "
        "step, f and the divergence from one pass (value_and_divergence), a loss on both, one "
        "backward; 'separate_forward' (results from before it) took the loss's f from a second "
        "net(x), which adds the same cost to both sides and pulls the ratio towards 1.",
        goal_a,
    ),
    Table(
        "goal_b_dense_vs_hollow",
        "Goal (b): dense / hollow >= d/4 for d >= 128",
        "The exact hollow operator beats the dense diagonal by at least d/4 at every d >= 128.",
        "Divergence workload on the HollowNet: the faster of dense_loop and dense_vectorized "
        "over each hollow method, same backend, device, variant, mode and batch; the target "
        "is d/4 for each column's d.",
        goal_b,
    ),
    Table(
        "goal_c_ddim_k4_vs_k1",
        "Goal (c): D_dim^4 costs at most 5x D_dim^1",
        "A k-th order dimension-wise derivative costs about k passes: cost(k=4) / cost(k=1) <= 5.",
        "ddim workload on the HollowNet: each hollow method's median time at k=4 over its time "
        "at k=1, same backend, device, variant, mode, batch and d.",
        goal_c,
    ),
    Table(
        "goal_d_torch_vs_jax",
        "Goal (d): the best PyTorch variant within 1.5x of JAX jit",
        "On a GPU the fastest PyTorch variant of each hollow method is within 1.5x of JAX's "
        "jit at every d.",
        "Divergence workload on the HollowNet: the fastest torch variant (eager, cudagraph, "
        "compile) over JAX jit, per device, mode, batch, method and d; 'fastest torch variant' "
        "names which one it was.",
        goal_d,
    ),
)
