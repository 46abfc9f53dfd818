"""The report's tables: each builder, registered in :data:`TABLES` by :func:`table`, returns a
DataFrame or raises :class:`NoData` with the reason. A cell is a number, the status of a point
that did not run ("oom", ...), or NaN where the inputs have no such point: never a zero."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from impls import DENSE_METHODS, HOLLOW_METHODS, STOCHASTIC_METHODS
from impls._stiff import REUSE, ROOT_FINDERS
from impls.cnf import CNF_EXACT
from impls.sde import ROUTE_METHODS, ROUTES
from reports.fit import RULE as FIT_RULE
from reports.fit import loglog_fits
from reports.load import facet_columns

Cell = float | str
FACET_NAMES = {"device_id": "device"}
DENSE_AND_ONE_VJP = (*DENSE_METHODS, "hutchinson")
MATCHED = (("mlp_flop_matched", "FLOP-matched"), ("mlp_param_matched", "param-matched"))


class NoData(Exception):
    """The inputs hold no data for this table or figure; the message says what is missing."""


@dataclass(frozen=True)
class Table:
    """A registered table, in ``section`` of the report. ``details``: ``build`` reads the
    machine_info and commit columns, which the others go without."""

    key: str
    title: str
    claim: str
    compared: str
    build: Callable[[pd.DataFrame], pd.DataFrame]
    section: str = "Details"
    details: bool = False


TABLES: list[Table] = []  # in the report's order


def table(key: str, title: str, claim: str, compared: str, **options) -> Callable:
    """Registers the decorated builder in :data:`TABLES` (``options``: Table's)."""

    def register(build: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable:
        TABLES.append(Table(key, title, claim, compared, build, **options))
        return build

    return register


def cells(rows: pd.DataFrame, keys: Sequence[str], column: str = "time_ms") -> pd.Series:
    """Per group of ``keys``: the median of ``column`` over measured rows, or, for a group
    where nothing ran, its status ("oom", ...). An object Series indexed by ``keys``."""
    by = [rows[k] for k in keys]
    ok = rows["status"].eq("ok")
    value = rows[column].where(ok).groupby(by, dropna=False).median()
    ran = ok.groupby(by, dropna=False).any()
    status = rows["status"].groupby(by, dropna=False).agg(lambda s: "/".join(sorted(set(s))))
    return value.astype(object).where(ran, status)


def wide(rows: pd.DataFrame, keys: Sequence[str], by: str) -> pd.DataFrame:
    """:func:`cells` per ``keys``, a column per value of ``by``."""
    return cells(rows, [*keys, by]).unstack(by).reset_index()


def ratio(num: Cell, den: Cell) -> Cell:
    """num / den; a not-run side's status passes through, and a missing side gives NaN."""
    for side in (num, den):
        if isinstance(side, str):
            return side
    if pd.isna(num) or pd.isna(den) or den == 0:
        return float("nan")
    return float(num) / float(den)


def _ratios(num: pd.Series, den: pd.Series) -> list[Cell]:
    return [ratio(a, b) for a, b in zip(num, den, strict=True)]


def pair_ratios(num: pd.Series, den: pd.Series, how: str = "inner") -> pd.DataFrame:
    """num / den matched on the index levels both have (``how``: the merge's); a level only
    ``num`` has (e.g. the method) stays a column. One row per pair, the ratio in ``ratio``."""
    left, right = num.rename("num").reset_index(), den.rename("den").reset_index()
    on = [c for c in right.columns if c in left.columns]
    for c in on:  # an all-NaN key (e.g. no train step on one side) reads back as float64
        if left[c].dtype != right[c].dtype:
            left[c], right[c] = left[c].astype(object), right[c].astype(object)
    both = left.merge(right, on=on, how=how)
    both["ratio"] = _ratios(both["num"], both["den"])
    return both.drop(columns=["num", "den"])


def is_measured(cell: Cell) -> bool:
    """A number, not a not-run status nor a missing value."""
    return not isinstance(cell, str) and pd.notna(cell)


def _best(values: pd.Series) -> Cell:
    """The fastest measured cell, else the statuses of those that did not run."""
    measured = [v for v in values if is_measured(v)]
    if measured:
        return min(measured)
    statuses = sorted({v for v in values if isinstance(v, str)})
    return "/".join(statuses) if statuses else float("nan")


@dataclass(frozen=True)
class Side:
    """One side of a claimed or goal ratio, as data: the ``workload`` points of ``methods`` on
    ``models`` with d >= ``min_d`` whose columns equal ``where``'s values, as :func:`cells` per
    (shared keys, ``by``, d); with ``fastest``, the fastest over that column's values.
    ``rename`` renames index levels (e.g. "method" to "hollow method")."""

    workload: str
    methods: tuple[str, ...]
    models: tuple[str, ...]
    where: dict[str, object] = field(default_factory=dict)
    by: tuple[str, ...] = ()
    fastest: str | None = None
    rename: dict[str, str] | None = None
    min_d: int = 1

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        keep = frame["workload"].eq(self.workload) & frame["method"].isin(self.methods)
        keep &= frame["model"].isin(self.models) & frame["d"].ge(self.min_d).fillna(False)
        for column, value in self.where.items():
            keep &= frame[column].eq(value).fillna(False)
        return frame[keep]

    def cells(self, rows: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
        per = cells(rows, [*keys, *self.by, "d", *filter(None, [self.fastest])])
        if self.fastest:  # over the last level
            per = per.groupby(level=list(range(per.index.nlevels - 1)), dropna=False).agg(_best)
        return per.rename_axis(index=self.rename) if self.rename else per


@dataclass(frozen=True)
class Target:
    """A bound on a ratio at each d: a ceiling, or a floor when ``above``; ``label`` is how the
    tables print it."""

    label: str
    bound: Callable[[float], float]
    above: bool = False

    def verdict(self, value: Cell, d: float) -> str:
        """One ratio's verdict: "met", "not met", a not-run side's status, or "—" (no side)."""
        if isinstance(value, str):
            return value
        if pd.isna(value):
            return "—"
        missed = value < self.bound(d) if self.above else value > self.bound(d)
        return "not met" if missed else "met"


# Claim C3 and goal (a): the exact divergence on the HollowNet against one Hutchinson probe on a
# matched MLP (goal (a): the FLOP-matched one), at most 1.0x.
EXACT_DIVERGENCE = Side("divergence", HOLLOW_METHODS, ("hollownet",))
HUTCHINSON_1 = Side("divergence", ("hutchinson",), ("mlp_flop_matched",), {"n_probes": 1})
AT_MOST_ONE = Target("<= 1", lambda d: 1.0)


def workload_rows(frame: pd.DataFrame, workload: str) -> pd.DataFrame:
    """The points of ``workload``; NoData where there are none."""
    rows = frame[frame["workload"].eq(workload)]
    if rows.empty:
        raise NoData(f"no '{workload}' workload points in the inputs")
    return rows


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns=FACET_NAMES).reset_index(drop=True)


def _not_run_list(rows: pd.Series) -> str:
    """'d=512: oom, ...' from a Series of cells indexed by d."""
    return ", ".join(f"d={d}: {v}" for d, v in rows.items() if isinstance(v, str))


@table(
    "c1_ddim_k_passes",
    "C1: D_dim^k costs k passes, whatever d is",
    "A hollow operator's cost grows no faster than the network's own: its 'cost ratio / FLOP "
    "ratio' between the largest and the smallest d stays near or below 1, and its 'cost vs k=1' "
    "is about k (k passes). A dense method needs d passes per order, so its cost ratio grows like "
    "the d ratio times the FLOP ratio.",
    "Median time of each ddim point (workload 'ddim'), largest measured d against smallest, per "
    "backend, device, mode, method, model and k. 'FLOP ratio' is the model's analytic forward "
    "FLOPs at those two d; 'cost vs k=1' is the time at d max over the same method's k=1 time "
    "there.",
    section="Paper claims",
)
def c1_ddim(frame: pd.DataFrame) -> pd.DataFrame:
    ddim = workload_rows(frame, "ddim")
    ddim = ddim[ddim["d"].notna() & ddim["k"].notna()]
    line = [*facet_columns(ddim), "method", "model"]
    rows = []
    for _, one_line in ddim.groupby(line, dropna=False, sort=True):
        at_k1 = cells(one_line[one_line["k"].eq(1).fillna(False)], ["d"])
        for k, rows_k in one_line.groupby("k", sort=True):
            head = {**{c: rows_k[c].iloc[0] for c in line}, "k": k}
            flops = rows_k.groupby("d")["flops"].median()
            rows.append(_c1_row(head, cells(rows_k, ["d"]), flops, at_k1))
    return _display(pd.DataFrame(rows))


def _c1_row(head: dict, times: pd.Series, flops: pd.Series, k1: pd.Series) -> dict:
    """One C1 row from a line's cells and FLOPs per d (and the same line's k=1 cells)."""
    measured = times[times.map(is_measured)]
    if measured.empty:
        return {**head, "not run": _not_run_list(times)}
    lo, hi = measured.index.min(), measured.index.max()
    cost = ratio(measured[hi], measured[lo]) if hi != lo else float("nan")
    flop = ratio(flops[hi], flops[lo]) if hi != lo else float("nan")
    return {
        **head,
        "d min": lo,
        "d max": hi,
        "ms @ d min": measured[lo],
        "ms @ d max": measured[hi],
        "cost ratio (d max / d min)": cost,
        "d ratio": ratio(hi, lo),
        "FLOP ratio": flop,
        "cost ratio / FLOP ratio": ratio(cost, flop),
        "cost vs k=1 @ d max": ratio(measured[hi], k1.get(hi, np.nan)),
        "not run": _not_run_list(times),
    }


@table(
    "c2_dense_diagonal",
    "C2: a dense Jacobian diagonal costs as much as the full Jacobian",
    "Without structure, the diagonal needs d vector-Jacobian products, the price of the whole "
    "Jacobian: dense_loop (keeps only the diagonal) costs about what dense_vectorized (builds the "
    "full Jacobian, then reads its diagonal) costs, and about d one-VJP passes.",
    "Divergence workload, per backend, device, mode, model and d. 'one VJP' is the hutchinson "
    "n_probes=1 time on the same model (one forward and one vector-Jacobian product); the harness "
    "does not time a standalone full Jacobian, so dense_vectorized, which materialises it for "
    "k=1, stands for it.",
    section="Paper claims",
)
def c2_dense_diagonal(frame: pd.DataFrame) -> pd.DataFrame:
    div = workload_rows(frame, "divergence")
    dense = div["method"].isin(DENSE_METHODS)
    if not dense.any():
        raise NoData("no dense_loop or dense_vectorized divergence points in the inputs")
    one_vjp = div["method"].eq("hutchinson") & div["n_probes"].eq(1).fillna(False)
    rows = div[(dense | one_vjp) & div["model"].isin(div.loc[dense, "model"].unique())]
    table = wide(rows, [*facet_columns(div), "model", "d"], "method")
    table = table.assign(**{m: np.nan for m in DENSE_AND_ONE_VJP if m not in table})
    table = table[table["dense_loop"].notna() | table["dense_vectorized"].notna()]
    loop, full, one = (table[m] for m in DENSE_AND_ONE_VJP)
    out = table.drop(columns=list(DENSE_AND_ONE_VJP))
    out["dense_loop ms (diagonal)"] = loop
    out["dense_vectorized ms (full Jacobian)"] = full
    out["hutchinson-1 ms (one VJP)"] = one
    out["diagonal / full Jacobian"] = _ratios(loop, full)
    out["diagonal / one VJP"] = passes = _ratios(loop, one)
    out["(diagonal / one VJP) / d"] = _ratios(passes, table["d"].astype(float))
    return _display(out)


@table(
    "c3_exact_vs_stochastic",
    "C3: the exact divergence costs about as much as a stochastic estimate",
    "With a HollowNet the exact divergence costs about one Hutchinson probe on a comparable plain "
    "MLP. The design goal is a ratio of at most 1.0 against the FLOP-matched MLP, at every d.",
    "Divergence workload: hollow (and hollow_forward) on the HollowNet against hutchinson with "
    "n_probes=1 on the FLOP-matched and the parameter-matched MLP, per backend, device, mode and "
    "d; the ratio is exact time over Hutchinson time.",
    section="Paper claims",
)
def c3_exact_vs_stochastic(frame: pd.DataFrame) -> pd.DataFrame:
    div = workload_rows(frame, "divergence")
    exact = EXACT_DIVERGENCE.rows(div)
    hutch = replace(HUTCHINSON_1, models=tuple(m for m, _ in MATCHED)).rows(div)
    if exact.empty or hutch.empty:
        raise NoData("needs hollow divergence points and hutchinson-1 points on a matched MLP")
    keys = [*facet_columns(div), "d"]
    mine = cells(exact, [*keys, "method"]).rename("exact ms").reset_index()
    theirs = wide(hutch, keys, "model")
    table = mine.merge(theirs, on=keys, how="inner").rename(columns={"method": "exact method"})
    for model, short in MATCHED:
        other = table.get(model, pd.Series(np.nan, index=table.index))
        table[f"hutchinson-1 {short} ms"] = other
        table[f"exact / hutchinson-1 {short}"] = _ratios(table["exact ms"], other)
    flop_matched = zip(table["exact / hutchinson-1 FLOP-matched"], table["d"], strict=True)
    table["goal <= 1 (FLOP-matched)"] = [AT_MOST_ONE.verdict(v, d) for v, d in flop_matched]
    return _display(table.drop(columns=[m for m, _ in MATCHED], errors="ignore"))


TARGETS = (0.1, 0.01)  # the relative stds the budgets table asks of an estimator


@table(
    "estimator_budgets",
    "Stochastic estimators: the budget each needs, against the exact operator",
    "Hutch++ and XTrace reach a given relative std with fewer Jacobian-vector products than "
    "Hutchinson wherever the Jacobian's spectrum decays; the exact hollow divergence has no "
    "variance at all, so an estimator is worth its noise only where its time at the needed budget "
    "is below the hollow step's ('time / hollow' < 1).",
    "Divergence training steps (mode train), per backend, device, d, model and stochastic method: "
    "the smallest budget (Jacobian-vector products: Hutchinson's probes, the others' n_matvecs) "
    "whose relative std across probe seeds is below 10% and 1%, and the median time of that step "
    "over the median time of the hollow step on the HollowNet at the same d. 'not reached' gives "
    "the best relative std measured and its budget.",
)
def estimator_budgets(frame: pd.DataFrame) -> pd.DataFrame:
    div = workload_rows(frame, "divergence")
    train = div[div["mode"].eq("train") & div["status"].eq("ok")]
    est = train[train["method"].isin(STOCHASTIC_METHODS) & train["error_kind"].eq("rel_std")]
    hollow = train[train["method"].eq("hollow") & train["model"].eq("hollownet")]
    if est.empty or hollow.empty:
        raise NoData("needs train-mode divergence points of hollow and of a stochastic method")
    keys = [*facet_columns(div), "d"]
    hollow_ms = hollow.groupby(keys, dropna=False)["time_ms"].median()
    rows = []
    for key, sub in est.groupby([*keys, "model", "method"], dropna=False):
        budgets = sub.groupby("matvecs")[["error", "time_ms"]].median().sort_index()
        row = dict(zip([*keys, "model", "method"], key, strict=True))
        row["hollow ms"] = hollow_ms.get(key[: len(keys)], float("nan"))
        for target in TARGETS:
            row.update(_first_below(budgets, target, row["hollow ms"]))
        rows.append(row)
    return _display(pd.DataFrame(rows))


def _first_below(budgets: pd.DataFrame, target: float, hollow_ms: float) -> dict[str, Cell]:
    """The smallest budget with error < target and its time over hollow's, or what was best."""
    hit = budgets[budgets["error"] < target]
    name = f"rel std < {target:.0%}"
    if hit.empty:
        best = budgets["error"].idxmin()
        missed = f"not reached (best {budgets.loc[best, 'error']:.1%} at {best:.0f})"
        return {f"budget, {name}": missed, f"time / hollow, {name}": float("nan")}
    return {
        f"budget, {name}": int(hit.index[0]),
        f"time / hollow, {name}": ratio(hit["time_ms"].iloc[0], hollow_ms),
    }


# One ODE case: root finders are compared within it. stiffness (HollowNet system) and t1
# (presets shorten Robertson) are shown only where they tell cases apart.
ODE_CASE = ("problem", "d", "stiffness", "t1", "stepper", "rtol")
# Solver counters (bench/SCHEMA.md, "ODE keys") and their table headings.
ODE_METRICS = {
    "n_steps": "step attempts",
    "iters_per_step": "iters / step",
    "n_failed": "not converged",
    "nfe": "NFE",
    "n_jac": "Jacobians",
    "n_diag": "diagonals",
    "error": "max abs error",
    "error_rel": "max rel error",
}


def ode_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The 'ode' rows with typed counters, ``stepper`` (older files: ``method``), a ``root
    finder`` label that names a Jacobian reuse other than "never", and ``ran``: the status, or
    "stopped" for a timed solve that did not reach t1 (its time is not a whole solve's)."""
    rows = workload_rows(frame, "ode")
    needed = (*ODE_CASE, "root_finder", "reuse", "success", "t_final", *ODE_METRICS)
    rows = rows.assign(**{c: None for c in needed if c not in rows})
    for column in ("stiffness", "t1", "rtol", "t_final", *ODE_METRICS):
        rows[column] = pd.to_numeric(rows[column], errors="coerce").astype(float)
    rows["stepper"] = rows["stepper"].fillna(rows["method"])
    finder, reuse = rows["root_finder"].astype(str), rows["reuse"].fillna("never").astype(str)
    rows["root finder"] = finder.where(reuse.eq("never"), finder + " (reuse " + reuse + ")")
    # fixed-point, then Newton, then Jacobi-Newton, each by reuse; unknown ones last
    f = finder.map({name: i for i, name in enumerate(ROOT_FINDERS)}).fillna(len(ROOT_FINDERS))
    r = reuse.map({name: i for i, name in enumerate(REUSE)}).fillna(len(REUSE))
    rows["finder rank"] = f * (len(REUSE) + 1) + r
    stopped = rows["status"].eq("ok") & rows["success"].eq(False)
    rows["ran"] = rows["status"].where(~stopped, "stopped")
    return rows


@table(
    "ode_jacobi_newton",
    "Jacobi-Newton against fixed-point iteration and Newton (workload 'ode')",
    "Jacobi-Newton (elementwise Newton with the Jacobian diagonal D_dim F) solves the implicit "
    "stages of a stiff solver in fewer iterations than fixed-point iteration, which fails to "
    "converge as steps grow, at a fraction of full Newton's cost (a dense Jacobian and an LU per "
    "iteration): on a Jacobi-Newton row, '<finder> / JN time' above 1 means Jacobi-Newton was "
    "faster. It converges linearly, not quadratically like Newton, so where the Jacobian's "
    "off-diagonal coupling is strong (the classic chemistry problems) it needs more iterations "
    "per step than Newton; on the HollowNet system it needs as few.",
    "One row per backend, device, case (problem, d, the HollowNet system's stiffness, stepper, "
    "rtol; t1 where a problem ran to several end times) and root finder ('reuse': when Newton "
    "re-evaluates its Jacobian; 'never': every iteration). Median time of one whole solve; the "
    "solver's counters of that solve: step attempts, root-finder iterations per attempt, attempts "
    "whose root finder did not converge, NFE, dense Jacobian and diagonal evaluations; the max "
    "absolute and the max componentwise relative error of y(t1) against scipy (Radau, or BDF for "
    "the HollowNet system, at rtol 1e-10; the relative error divides by max(|ref|, 1e-6 x the "
    "problem's atol scale), so a tiny species counts as much as a large one). 'stopped': the "
    "solve hit max_steps before t1, so it has no error and no ratio. The time ratios sit on the "
    "Jacobi-Newton rows, one column per other root finder of the same case.",
    section="Workloads",
)
def ode_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = ode_points(frame)
    # every ODE point runs mode "eval" in float64, where the matmul precision does not apply
    facets = [c for c in facet_columns(rows) if c not in ("mode", "matmul_precision")]
    shown = {  # stiffness where a problem has one, t1 where a problem ran to several end times
        "stiffness": rows["stiffness"].notna().any(),
        "t1": rows.groupby("problem")["t1"].nunique().gt(1).any(),
    }
    case = [c for c in ODE_CASE if shown.get(c, True)]
    keys = [*facets, *case, "root finder"]
    by, ok = [rows[k] for k in keys], rows["status"].eq("ok")
    table = pd.concat(
        [
            cells(rows, keys).rename("ms (median)"),
            # what the ratios divide: a solve that stopped before t1 is "stopped", not a time
            cells(rows.assign(status=rows["ran"]), keys).rename("whole"),
            rows["finder rank"].groupby(by, dropna=False).min().rename("rank"),
            rows["ran"].eq("stopped").groupby(by, dropna=False).any().rename("stopped"),
            rows["t_final"].where(rows["ran"].eq("stopped")).groupby(by, dropna=False).min(),
            rows[list(ODE_METRICS)].where(ok).groupby(by, dropna=False).median(),
        ],
        axis=1,
    ).rename(columns=ODE_METRICS)
    # a stopped solve's error cells say where it stopped (diffrax reports no time when it fails)
    at = table.loc[table["stopped"], "t_final"]
    note = [f"stopped at t={t:.3g}" if np.isfinite(t) else "stopped" for t in at]
    for column in ("max abs error", "max rel error"):
        table[column] = table[column].astype(object)
        table.loc[table["stopped"], column] = note
    order = [*facets, *case, "rank"]  # tolerances from loose to tight
    table = table.reset_index().sort_values(order, ascending=[c != "rtol" for c in order])
    table = _jn_ratios(table.reset_index(drop=True), [*facets, *case])
    table["rtol"] = table["rtol"].map(tolerance)
    return _display(table.drop(columns=["whole", "rank", "stopped", "t_final"]))


def tolerance(rtol: float) -> str:
    """'1e-05', '2.5e-04': one notation for every tolerance (a float cell would show 0.001)."""
    mantissa, exponent = f"{rtol:e}".split("e")
    return f"{float(mantissa):g}e{exponent}"


def _jn_ratios(table: pd.DataFrame, case: list[str]) -> pd.DataFrame:
    """On each Jacobi-Newton row, '<finder> / JN time' for every other finder of its case."""
    jn = table["root finder"].str.startswith("jacobi_newton")
    others = list(dict.fromkeys(table.loc[~jn, "root finder"]))
    ratios = pd.DataFrame(np.nan, index=table.index, columns=others, dtype=object)
    for _, group in table.groupby(case, dropna=False, sort=False):
        whole = dict(zip(group["root finder"], group["whole"], strict=True))
        for i in group.index[jn[group.index]]:
            for other in others:
                if other in whole:
                    ratios.at[i, other] = ratio(whole[other], table.at[i, "whole"])
    return table.join(ratios.rename(columns=lambda other: f"{other} / JN time"))


# (column, cnf_item it comes from, heading): the per-iteration timing and counters, then what
# the wall-clock budget reached.
CNF_COLUMNS = (
    ("time_ms", "iteration", "ms / iteration"),
    ("nfe_forward", "iteration", "NFE fwd"),
    ("nfe_backward", "iteration", "NFE bwd"),
    ("loglik_eval_ms", "iteration", "loglik eval ms"),
    ("budget_s", "budget", "budget s"),
    ("train_iterations", "budget", "iterations in budget"),
    ("nll_nats", "budget", "held-out NLL (nats)"),
    ("bits_per_dim", "budget", "bits/dim"),
    ("loglik_std", "budget", "loglik std across probe seeds (nats)"),
)


@table(
    "cnf_exact_vs_stochastic",
    "CNF: exact against stochastic trace (workload 'cnf')",
    "An exact trace costs about a 1-probe estimate per training step and removes the estimator's "
    "variance from the log-likelihood.",
    "Per backend, device, data set, d and batch, one row per divergence method: median ms of one "
    "training iteration (forward solve + backward) and its NFE forward/backward, the median ms of "
    "a held-out batch log-likelihood, and, from the fixed wall-clock budget points, the "
    "iterations run, the exact held-out NLL in data space and the std of the method's "
    "log-likelihood estimate across probe seeds ('exact': no variance). 'ms vs hutchinson-1' is "
    "the iteration time over Hutchinson-1's.",
    section="Workloads",
)
def cnf_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = workload_rows(frame, "cnf")
    needed = ["cnf_item", "dataset", "nfe_kind", *(c for c, _, _ in CNF_COLUMNS)]
    rows = rows.assign(**{c: np.nan for c in needed if c not in rows})
    rows = rows.assign(**{c: pd.to_numeric(rows[c], errors="coerce") for c, _, _ in CNF_COLUMNS})
    keys = [*dict.fromkeys([*facet_columns(rows), "dataset", "d", "batch"])]
    parts = {
        heading: cells(rows[rows["cnf_item"].eq(item)], [*keys, "series"], column)
        for column, item, heading in CNF_COLUMNS
    }
    iterations = rows[rows["cnf_item"].eq("iteration")]
    parts["NFE kind"] = iterations.groupby([*keys, "series"], dropna=False)["nfe_kind"].first()
    table = pd.DataFrame(parts).reset_index().rename(columns={"series": "method"})
    exact = table["method"].isin(CNF_EXACT)
    table.insert(len(keys) + 1, "trace", np.where(exact, "exact", "stochastic"))
    # An exact estimate does not vary with the probes: say so rather than print a zero.
    std, nll = "loglik std across probe seeds (nats)", "held-out NLL (nats)"
    ran = table[nll].map(lambda v: isinstance(v, str) or pd.notna(v))
    table[std] = table[std].astype(object).where(~(exact & ran), "exact")
    one_probe = table[table["method"].eq("hutchinson-1")].set_index(keys)["ms / iteration"]
    per = table.set_index([*keys, "method"])["ms / iteration"]
    vs = pair_ratios(per, one_probe, how="left")["ratio"].to_numpy()
    table.insert(len(keys) + 3, "ms vs hutchinson-1", vs)
    table["_order"] = table["method"].map(_cnf_method_rank)
    return _display(table.sort_values([*keys, "_order"]).drop(columns="_order"))


def _cnf_method_rank(label: str) -> float:
    """Exact methods first (hollow, dense_vectorized, dense_loop), then Hutchinson by probes."""
    if label in CNF_EXACT:
        return CNF_EXACT.index(label)
    probes = str(label).rpartition("-")[2]
    return len(CNF_EXACT) + (float(probes) if probes.isdigit() else 0.0)


@table(
    "sde_fp_residual",
    "Fokker-Planck residual cost (workload 'sde')",
    "The hollow route gives the residual's D_dim f, D_dim g and D_dim^2 g in a few passes "
    "whatever d is, so its cost grows more slowly in d than the dense route's d directional "
    "passes: 'dense / hollow' grows with d.",
    "Median time of each 'sde' point per backend, device, mode and d: the hollow route "
    "(derivatives from the HollowNets' transformers) against the dense route (second-order JVPs "
    "along each basis direction). Mode eval is the residual at a batch of (t, x); train is the "
    "mean squared residual plus the backward pass into both nets. A cell holds the status of a "
    "point that did not run; 'missing' names a side the inputs lack.",
    section="Workloads",
)
def sde_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = workload_rows(frame, "sde")
    route = rows["route"] if "route" in rows else pd.Series(None, index=rows.index)
    route_of_method = {method: route for route, method in ROUTE_METHODS.items()}
    rows = rows.assign(route=route.fillna(rows["method"].map(route_of_method)))
    keys = [*facet_columns(rows), "d"]
    table = wide(rows[rows["route"].isin(ROUTES)], keys, "route")
    table = table.assign(**{r: np.nan for r in ROUTES if r not in table})
    hollow, dense = table["hollow"], table["dense"]
    out = table[keys].copy()
    out.columns.name = None
    out["hollow ms"], out["dense ms"] = hollow, dense
    out["dense / hollow"] = _ratios(dense, hollow)
    out["missing"] = [
        ", ".join(f"no {r} point" for r, v in zip(ROUTES, pair, strict=True) if pd.isna(v))
        for pair in zip(hollow, dense, strict=True)
    ]
    return _display(out)


def step_flops(row: pd.Series) -> float:
    """The analytic FLOPs of one divergence step (k = 1), else NaN. With F the forward FLOPs
    per sample: Hutchinson-m (1 + m) F (m input VJPs); hollow methods F plus one extra pass of
    tau's matmuls after its first layer (carried forward, or for ``hollow`` in reverse); dense
    (1 + d) F. A train step 3x that for its reverse pass (+ F for a "separate_forward" one)."""
    if row.get("workload") != "divergence" or row.get("k") != 1 or pd.isna(row.get("flops")):
        return float("nan")
    flops, d, method = float(row["flops"]), int(row["d"]), row["method"]
    if method == "hutchinson":
        per_sample = (1 + int(row["n_probes"] if pd.notna(row["n_probes"]) else 1)) * flops
    elif method in ("hollow", "hollow_forward"):
        try:
            hidden = [*json.loads(row["model_spec"])["trans_hidden"], 1]
        except (TypeError, KeyError, ValueError):
            return float("nan")
        per_sample = flops + 2 * d * sum(a * b for a, b in itertools.pairwise(hidden))
    else:
        per_sample = (1 + d) * flops
    if row["mode"] == "train":
        # the reverse pass; a step from before the fair one also ran a second forward
        per_sample = 3 * per_sample + (flops if row.get("step") == "separate_forward" else 0)
    return per_sample * int(row["batch"])


@table(
    "efficiency",
    "Efficiency: achieved FLOP/s against the FLOP-matched MLP step",
    "A method is as fast as its FLOPs allow when it runs at the machine's matmul rate: the "
    "FLOP-matched MLP's Hutchinson-1 step, nearly all GEMMs, stands for that rate, so a fraction "
    "well below 1 is time lost to layout, memory traffic or launches, not to arithmetic.",
    "Divergence workload, k = 1, measured points: 'step GFLOP' is the step's analytic FLOPs (F "
    "the model's forward FLOPs per sample, times the batch: Hutchinson with m probes (1 + m) F; a "
    "hollow method F plus one pass of tau's matmuls after its first layer; a dense method (1 + d) "
    "F; a train step 3x that, for its reverse pass); 'GFLOP/s' is that over the median time, and "
    "the fraction divides it by the FLOP-matched MLP Hutchinson-1 step's GFLOP/s at the same "
    "backend, device, variant, mode, train step definition ('step'), batch and d. 'forward "
    "GFLOP' is F times the batch, one forward pass of the model; 'in forward passes' is the "
    "step's time over that forward's time at the FLOP-matched MLP step's GFLOP/s (so that step "
    "itself reads its analytic count, 6 in train mode).",
)
def efficiency_table(frame: pd.DataFrame) -> pd.DataFrame:
    div = workload_rows(frame, "divergence")
    div = div[div["k"].eq(1).fillna(False) & div["status"].eq("ok")]
    if div.empty or "model_spec" not in div:
        raise NoData("needs measured divergence points")
    div = div.assign(
        step_gflop=[step_flops(r) / 1e9 for _, r in div.iterrows()],
        forward_gflop=div["flops"] * div["batch"].astype(float) / 1e9,
    )
    div = div[div["step_gflop"].notna()]
    if div.empty:
        raise NoData("no divergence point has analytic step FLOPs")
    keys = [*facet_columns(div), "step", "d"]
    per = div.groupby([*keys, "method", "model", "n_probes", "series"], dropna=False).agg(
        ms=("time_ms", "median"),
        **{"step GFLOP": ("step_gflop", "first"), "forward GFLOP": ("forward_gflop", "first")},
    )
    per["GFLOP/s"] = per["step GFLOP"] / (per["ms"] / 1e3)
    flat = per.reset_index()
    mlp = flat["method"].eq("hutchinson") & flat["model"].eq("mlp_flop_matched")
    baseline = flat[mlp & flat["n_probes"].eq(1).fillna(False)].set_index(keys)["GFLOP/s"]
    fraction = pair_ratios(per["GFLOP/s"], baseline, how="left")["ratio"].to_numpy()
    flat["fraction of FLOP-matched MLP step"] = fraction = fraction.astype(float)
    # time / (forward GFLOP / baseline GFLOP/s) = (step GFLOP / fraction) / forward GFLOP
    flat["in forward passes"] = flat["step GFLOP"] / fraction / flat["forward GFLOP"]
    return _display(flat)


def prefer_fair_step(rows: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``rows`` without the "separate_forward" train steps of a group of ``keys`` that also
    has the fair "value_and" step, so that a best-of never picks the older definition."""
    by = [rows[k] for k in keys]
    fair = rows["step"].eq("value_and").groupby(by, dropna=False).transform("any")
    return rows[~(fair & rows["step"].eq("separate_forward"))]


@table(
    "scaling_exponents",
    "Fitted scaling exponents",
    "The exponent b of time ~ d^b for each line of the time-vs-d figure.",
    "OLS of log time on log d over the measured points of each line that are not noisy (their "
    "count is in 'noisy points left out'; 'd': how many d remain), the median per d; the 95% CI "
    f"uses the t distribution with n-2 degrees of freedom (none with two d). {FIT_RULE}",
)
def scaling_fits(frame: pd.DataFrame) -> pd.DataFrame:
    div = workload_rows(frame, "divergence")
    keys = [*facet_columns(div), "series"]
    fits = loglog_fits(div, keys)
    if not fits:
        raise NoData("no line has two or more measured d")
    rows = [{**dict(zip(keys, key, strict=True)), **fit.as_dict()} for key, fit in fits.items()]
    return _display(pd.DataFrame(rows))


# What the lists of points name of each point.
POINT_COLUMNS = (
    *("backend", "device_id", "workload", "method", "model", "d", "k", "n_probes"),
    "mode",
)


@table(
    "not_run",
    "Points that did not run",
    "A point that ran out of memory, timed out, was skipped or failed is listed here and marked "
    "in the figures; it is never counted as zero.",
    "Every input point whose status is not 'ok'.",
)
def not_run_table(frame: pd.DataFrame) -> pd.DataFrame:
    missed = frame[frame["status"].ne("ok")]
    if missed.empty:
        raise NoData("every point in the inputs ran")
    return _display(missed[[*POINT_COLUMNS, "status", "reason"]])


@table(
    "noisy",
    "Noisy points",
    "A point timed while other work disturbed it (its spread, or the CPU share the process got, "
    "failed the harness's noise test twice) is drawn hollow in the figures and left out of the "
    "fitted exponents and the goal verdicts; its time is an upper bound.",
    "Every input point flagged 'noisy' (bench/SCHEMA.md): its median ms, whether it was "
    "re-measured, the 1-minute load average and the process's CPU share while it was timed, and "
    "which checks of the noise test it failed.",
)
def noisy_table(frame: pd.DataFrame) -> pd.DataFrame:
    noisy = frame[frame["noisy"]]
    if noisy.empty:
        raise NoData("no point in the inputs is flagged noisy (or the files predate the flag)")
    columns = [*POINT_COLUMNS, "time_ms", "remeasured", "load_1m", "cpu_share", "noise"]
    table = noisy.assign(**{c: None for c in columns if c not in noisy})[columns]
    table["noise"] = table["noise"].map(_failed_checks)
    return table.rename(columns={**FACET_NAMES, "noise": "failed checks"}).reset_index(drop=True)


def _failed_checks(noise) -> str:
    """'max_min, cpu_share' from a point's ``noise`` record (JSON text in the frame)."""
    try:
        return ", ".join(json.loads(noise).get("failed") or [])
    except (TypeError, ValueError, AttributeError):
        return ""


LOAD = "machine.hollowbench.load_avg"


@table(
    "machines",
    "Machines",
    "Where each point was measured: the other tables and the figures name a device by its key, "
    "which this table resolves to the device's name and its machine.",
    "One row per device key in the inputs; versions, commit and load average as the first file "
    "of the device reports them (load average: of each backend's run, in the order of 'backends').",
    section="At a glance",
    details=True,
)
def machines_table(frame: pd.DataFrame) -> pd.DataFrame:
    fields = {
        "device_name": "name",
        "machine": "machine",
        "machine.hollowbench.cpu": "cpu",
        "gpu_names": "gpus",
        "machine.hollowbench.torch": "torch",
        "machine.hollowbench.jax": "jax",
        "machine.hollowbench.cuda": "cuda",
        "commit.id": "commit",
    }
    frame = frame.assign(**{c: None for c in (*fields, LOAD) if c not in frame})
    groups = frame.sort_values("backend").groupby("device_id", dropna=False)
    table = groups[list(fields)].first().rename(columns=fields)
    table["backends"] = groups["backend"].agg(lambda s: ", ".join(s.dropna().unique()))
    per_run = frame.groupby(["device_id", "backend"], dropna=False)[LOAD].first()
    table["load avg at start (1, 5, 15 min)"] = per_run.groupby(level=0).agg(
        lambda s: "; ".join(s.dropna().astype(str))
    )
    table["points"] = groups.size()
    table["did not run"] = groups["status"].agg(lambda s: int(s.ne("ok").sum()))
    return table.rename_axis("device").reset_index()
