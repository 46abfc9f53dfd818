"""The report's answers first: a line per claim (C1-C5) or goal ((a)-(d)), device, backend and
mode with its verdict, the number that decides it and the d it has data for, read off the tables
the build already made; each claim's coverage; and a budgeted sweep's plan (``sweep.plan``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from impls import HOLLOW_METHODS
from reports.tables import AT_MOST_ONE, NoData, Side, Table, Target, is_measured
from results_format.schema import PAPER_DIMS

GROUP = ("backend", "device", "mode")
Long = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Claim:
    """How a claim or goal is read off its table: ``long(table)`` gives rows of GROUP, ``d``,
    ``value`` (a number, or a not-run status) and ``config`` (what was measured); each group's
    verdict takes the best config at each d and judges the worst d by ``target``. ``needs``: the
    d it needs (None: fixed by its problems); ``covers``: the points whose d count as its data
    (else the d with a value)."""

    name: str
    table: str
    what: str
    target: Target
    long: Long
    needs: tuple[int, ...] | None = PAPER_DIMS
    covers: Side | None = None
    backend: str | None = None  # one label for a cross-backend comparison


def _rows(table: pd.DataFrame, value: str, d: str, config: list[str]) -> pd.DataFrame:
    """The table's GROUP columns, d, value and the ``config`` columns joined into one label."""
    table = table.assign(**{c: "—" for c in GROUP if c not in table})
    if table.empty:
        return pd.DataFrame(columns=[*GROUP, "d", "value", "config"])
    # pandas' string dtype keeps a missing cell missing through astype(str)
    label = table[config].astype(str).fillna("—").agg(", ".join, axis=1) if config else ""
    out = table[list(GROUP)].assign(d=table[d], value=table[value], config=label)
    return out[out["d"].notna()]


def _columns(table: pd.DataFrame, *names: str) -> list[str]:
    return [c for c in names if c in table]


def _per_d(table: pd.DataFrame) -> pd.DataFrame:
    """A goal table (a column per 'd=N') as rows, the fair train step preferred."""
    table = table.assign(**{c: "—" for c in GROUP if c not in table})
    if "step" in table:
        fair = table["step"].eq("value_and").groupby([table[c] for c in GROUP]).transform("any")
        table = table[~(fair & table["step"].eq("separate_forward"))]
    config = _columns(table, "method", "hollow method", "variant", "step")
    dcols = [c for c in table if c.startswith("d=")]
    long = table.melt([*GROUP, *config], dcols, var_name="dcol", value_name="v")
    return _rows(long.assign(dn=long["dcol"].str[2:].astype(int)), "v", "dn", config)


def _c1(table: pd.DataFrame) -> pd.DataFrame:
    """Each hollow method's worst k (the claim holds for every k), its d max as its d."""
    hollow = table[table["method"].isin(HOLLOW_METHODS) & table["model"].eq("hollownet")]
    hollow = hollow.sort_values("cost ratio / FLOP ratio", ascending=False, na_position="last")
    worst = hollow.drop_duplicates([*_columns(hollow, *GROUP), "method", "d max"])
    span = worst.assign(k=worst["k"].map("worst k={}".format), span=_span(worst))
    return _rows(span, "cost ratio / FLOP ratio", "d max", ["method", "k", "span"])


def _span(table: pd.DataFrame) -> pd.Series:
    return "d " + table["d min"].astype(str) + ".." + table["d max"].astype(str)


def _c4(table: pd.DataFrame) -> pd.DataFrame:
    jn = table[table["root finder"].str.startswith("jacobi_newton")]
    others = [c for c in jn if c.endswith(" / JN time")]
    long = jn.melt(_columns(jn, *GROUP, "problem", "d", "rtol"), others, "finder", "ratio")
    long["finder"] = "vs " + long["finder"].str.removesuffix(" / JN time")
    long["rtol"] = "rtol " + long["rtol"].astype(str)
    return _rows(long, "ratio", "d", ["problem", "rtol", "finder"])


def _c5(table: pd.DataFrame) -> pd.DataFrame:
    hollow = table[table["method"].eq("hollow")]
    return _rows(hollow, "ms vs hutchinson-1", "d", _columns(hollow, "dataset", "variant"))


CLAIMS = (
    Claim(
        "C1",
        "c1_ddim_k_passes",
        "hollow D_dim^k cost ratio / FLOP ratio",
        Target("<= 1", lambda d: 1.0),
        _c1,
        covers=Side("ddim", HOLLOW_METHODS, ("hollownet",)),
    ),
    Claim(
        "C2",
        "c2_dense_diagonal",
        "dense diagonal / full Jacobian",
        Target(">= 0.5", lambda d: 0.5, above=True),
        lambda t: _rows(t, "diagonal / full Jacobian", "d", _columns(t, "model", "variant")),
    ),
    Claim(
        "C3",
        "c3_exact_vs_stochastic",
        "best exact divergence / Hutchinson-1 (FLOP-matched)",
        AT_MOST_ONE,
        lambda t: _rows(
            t, "exact / hutchinson-1 FLOP-matched", "d", _columns(t, "exact method", "variant")
        ),
    ),
    Claim(
        "C4",
        "ode_jacobi_newton",
        "other root finder's time / Jacobi-Newton's",
        Target(">= 1", lambda d: 1.0, above=True),
        _c4,
        needs=None,
    ),
    Claim(
        "C5",
        "cnf_exact_vs_stochastic",
        "CNF hollow iteration / Hutchinson-1",
        AT_MOST_ONE,
        _c5,
        needs=None,
    ),
    Claim(
        "(a)",
        "goal_a_exact_vs_hutchinson",
        "best hollow train step / Hutchinson-1 (FLOP-matched)",
        AT_MOST_ONE,
        lambda t: _per_d(t[t["mode"].eq("train")]),
    ),
    Claim(
        "(b)",
        "goal_b_dense_vs_hollow",
        "fastest dense / best hollow",
        Target(">= d/4", lambda d: d / 4, above=True),
        _per_d,
        needs=tuple(d for d in PAPER_DIMS if d >= 128),
    ),
    Claim(
        "(c)", "goal_c_ddim_k4_vs_k1", "D_dim^4 / D_dim^1", Target("<= 5", lambda d: 5.0), _per_d
    ),
    Claim(
        "(d)",
        "goal_d_torch_vs_jax",
        "best torch variant / best JAX",
        Target("<= 1.5", lambda d: 1.5),
        _per_d,
        backend="torch vs jax",
    ),
)


def _measured(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose value is a number (a boolean mask even when there are none)."""
    return rows[rows["value"].map(is_measured).astype(bool)]


def _margin(target: Target, value: float, d: float) -> float:
    """How far past its bound a value is: above 1, the target is missed."""
    bound = target.bound(d)
    return bound / value if target.above else value / bound


@dataclass(frozen=True)
class Line:
    """One claim's reading for one group of GROUP's values."""

    verdict: str
    number: str
    d: tuple[int, ...]


def _judge(claim: Claim, rows: pd.DataFrame, covered: tuple[int, ...]) -> Line:
    """The best config at each measured d with data (``covered``); the worst such d decides
    (see :class:`Claim`). A verdict comes only from d with data, so the line lists them."""
    measured = _measured(rows)
    if measured.empty:
        statuses = sorted({v for v in rows["value"] if isinstance(v, str)})
        why = f"did not run ({'/'.join(statuses)})" if statuses else "no pair of points"
        return Line("not measured", why, covered)
    # A claim whose data are its ``covers`` points (C1) may have a value at a d whose points
    # are all noisy: that d is no data, and judging it would show a verdict with no d.
    at_data = measured[measured["d"].astype(int).isin(covered)]
    if at_data.empty:
        at = ", ".join(str(d) for d in sorted(set(measured["d"].astype(int))))
        return Line("not measured", f"no data: measured at d={at} by noisy points only", covered)
    measured = at_data
    margin = [_margin(claim.target, float(v), d) for v, d in zip(*_vd(measured), strict=True)]
    measured = measured.assign(margin=margin)
    best = measured.loc[measured.groupby("d")["margin"].idxmin()]
    worst = best.loc[best["margin"].idxmax()]
    where = f"at d={int(worst['d'])}" + (" (worst d)" if len(best) > 1 else "")
    number = f"{claim.what} {float(worst['value']):.3g} {where}; {worst['config']}"
    return Line("met" if worst["margin"] <= 1 else "missed", number, covered)


def _vd(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    return rows["value"], rows["d"].astype(float)


def _covered(claim: Claim, rows: pd.DataFrame, frame: pd.DataFrame) -> dict[tuple, set]:
    """The d each group has data for: its measured, not noisy ``covers`` points, else its rows
    with a value."""
    if claim.covers is None:
        data = _measured(rows)
    else:
        points = claim.covers.rows(frame)
        points = points[points["status"].eq("ok") & ~points["noisy"]]
        data = points.assign(device=points["device_id"])
    data = data.assign(backend=claim.backend or data["backend"])
    return {key: set(g["d"].astype(int)) for key, g in data.groupby(list(GROUP), dropna=False)}


def _coverage(d: set | tuple, needs: tuple[int, ...] | None) -> str:
    """'3 of 7 d', or '2 d' where the claim's d are fixed by its problems."""
    count = len(set(d) & set(needs)) if needs else len(d)
    return f"{count} of {len(needs)} d" if needs else f"{count} d"


def claim_lines(tables: Mapping[str, pd.DataFrame | None], frame: pd.DataFrame) -> pd.DataFrame:
    """A row per claim and (backend, device, mode) with data, or per (backend, device) without:
    the verdict, the deciding number, the target and the d it has data for."""
    devices = (
        frame[["backend", "device_id"]].drop_duplicates().sort_values(["backend", "device_id"])
    )
    out = []
    for claim in CLAIMS:
        table = tables.get(claim.table)
        rows = claim.long(table) if table is not None else pd.DataFrame(columns=[*GROUP, "value"])
        rows = rows.assign(backend=claim.backend) if claim.backend and len(rows) else rows
        covered = _covered(claim, rows, frame)
        seen = set()
        for key, group in rows.groupby(list(GROUP), dropna=False, sort=True):
            seen.add(key[:2])
            line = _judge(claim, group, tuple(sorted(covered.get(key, ()))))
            out.append(_line(claim, key, line))
        pairs = {(claim.backend or b, d) for b, d in devices.itertuples(index=False)}
        for backend, device in sorted(pairs - seen, key=str):
            d = set().union(*(v for k, v in covered.items() if k[:2] == (backend, device)))
            why = "no such points in the inputs" if table is not None else "its table has no data"
            out.append(_line(claim, (backend, device, "—"), Line("not measured", why, tuple(d))))
    return pd.DataFrame(out)


def _line(claim: Claim, key: tuple, line: Line) -> dict:
    """A row of :func:`claim_lines`; ``_d`` (the d with data) is for :func:`coverage_table`."""
    return {
        "claim": claim.name,
        **dict(zip(GROUP, key, strict=True)),
        "verdict": line.verdict,
        "deciding number": line.number,
        "target": claim.target.label,
        "d with data": ", ".join(map(str, sorted(line.d))) or "none",
        "coverage": _coverage(line.d, claim.needs),
        "_d": line.d,
    }


def coverage_table(lines: pd.DataFrame) -> pd.DataFrame:
    """Per claim, backend and device (modes together): the d with data, how many of the d the
    claim needs, and the needed d without data."""
    needs = {c.name: c.needs for c in CLAIMS}
    out = []
    for (name, backend, device), group in lines.groupby(["claim", "backend", "device"], sort=False):
        d = sorted(set().union(*group["_d"]))
        wanted = needs[name]
        missing = ", ".join(str(x) for x in wanted if x not in d) if wanted else "—"
        out.append(
            {
                "claim": name,
                "backend": backend,
                "device": device,
                "d with data": ", ".join(map(str, d)) or "none",
                "coverage": _coverage(d, wanted),
                "needed d without data": missing or "none",
            }
        )
    return pd.DataFrame(out)


def plans(frame: pd.DataFrame) -> list[dict]:
    """The budgeted sweeps' plans (``hollowbench.plan``) of the input files, each with its
    ``source``; [] where no file carries one."""
    if "sweep.plan" not in frame:
        return []
    found = frame[["source", "sweep.plan"]].dropna().drop_duplicates()
    return [{**json.loads(plan), "source": src} for src, plan in found.itertuples(index=False)]


def plan_summary(plan: dict) -> str:
    """'FILE: budget 330 s: 212 planned, 190 run, 22 left out (budget: planned: 3, ...)': each
    kind of reason (its words before the first comma; the numbers after vary) and its count."""
    reasons = pd.Series([p.get("reason") for p in plan.get("left_out") or []], dtype=object)
    reasons = reasons.str.split(",").str[0]
    counts = reasons.value_counts().sort_index()
    why = (
        ", ".join(f"{r}: {n}" for r, n in counts.items())
        if len(counts) > 1
        else "".join(counts.index)
    )
    return (
        f"{plan.get('source')}: budget {plan.get('budget_s', float('nan')):g} s: "
        f"{plan.get('planned')} planned, {plan.get('run')} run, {len(reasons)} left out"
        + (f" ({why})" if why else "")
    )


def left_out_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every point a budgeted sweep planned but left out, with the reason."""
    rows = [
        {"source": plan["source"], "id": point.get("id"), "reason": point.get("reason")}
        for plan in plans(frame)
        for point in plan.get("left_out") or []
    ]
    if not rows:
        raise NoData("no budgeted sweep in the inputs left a point out (no hollowbench.plan)")
    return pd.DataFrame(rows)


def tables_after(tables: Mapping[str, pd.DataFrame | None], frame: pd.DataFrame) -> list[Table]:
    """The tables read off the others: the claim lines (with the plans' summaries), the
    coverage, and the points a budget left out."""
    lines = claim_lines(tables, frame)
    budget = "".join(f" Budgeted sweep, {plan_summary(p)}." for p in plans(frame))
    glance = Table(
        "at_a_glance",
        "Claims and goals at a glance",
        "Each claim (C1-C3 the paper's operators, C4 Jacobi-Newton, C5 the CNF's exact trace) and "
        "speed goal, per backend, device and mode: its verdict and the number that decides it. "
        "At each d the best configuration measured (method, variant, step, ...) counts, and the "
        "worst d decides: 'met' where it meets the target at every d with data, 'missed' where "
        "not, 'not measured' where no ratio could be formed at a d with data. Noisy points are "
        "left out. The "
        f"coverage counts the d with data of the d the claim needs (the paper preset's).{budget}",
        "Read off the tables below (Paper claims, Speed goals, Workloads): C1 the hollow rows' "
        "cost ratio / FLOP ratio between the smallest and largest d, each method's worst k "
        "(target <= 1); C2 dense_loop / "
        "dense_vectorized (>= 0.5: the diagonal costs about the full Jacobian); C3 exact / "
        "Hutchinson-1 on the FLOP-matched MLP; C4 every other root finder's solve time over "
        "Jacobi-Newton's (>= 1); C5 the CNF hollow iteration over Hutchinson-1's; goal (a) in "
        "train mode only, the fair 'value_and' step preferred. Devices by key: see Machines.",
        lambda _: lines.drop(columns="_d"),
        section="At a glance",
    )
    coverage = Table(
        "coverage",
        "Coverage of each claim",
        "Which d each claim and goal has data for, per backend and device, so a budgeted or "
        "partial sweep says what it left unanswered.",
        "The 'd with data' of the at-a-glance lines, modes together; 'needed d without data': "
        f"the paper preset's d ({', '.join(map(str, PAPER_DIMS))}; goal (b): d >= 128) that "
        "have none. C4 and C5 run at the d their problems and data sets fix.",
        lambda _: coverage_table(lines),
    )
    left_out = Table(
        "left_out",
        "Points a budgeted sweep left out",
        "A time-budgeted sweep (--bench-budget) runs the points the claims need first and leaves "
        "out what the budget does not reach: those points are absent, not failed.",
        "Every entry of hollowbench.plan.left_out in the inputs, with its reason.",
        left_out_table,
    )
    return [glance, coverage, left_out]
