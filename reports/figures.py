"""The report's figures (seaborn on matplotlib's Agg backend), each registered in
:data:`FIGURES` by the :func:`figure` decorator on its drawer, which returns a figure or raises
:class:`~reports.tables.NoData`. A point that did not run is an 'x' with its status at the
bottom edge, never a value; a noisy one is hollow."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

from impls import DENSE_METHODS, HOLLOW_METHODS, STOCHASTIC_METHODS
from reports.fit import RULE as FIT_RULE
from reports.fit import loglog_fits
from reports.load import text
from reports.tables import (
    NoData,
    cells,
    efficiency_table,
    ode_points,
    prefer_fair_step,
    ratio,
    tolerance,
    workload_rows,
)

NOT_RUN_NOTE = "x at the bottom edge: the point did not run (status beside it)"
NOISY_NOTE = (
    "A hollow marker is a noisy point: other work on the machine disturbed its timing "
    "(bench/SCHEMA.md, 'noisy'), so read it as an upper bound"
)
NOISY_LABEL = "noisy (hollow)"
NOISY_ATTR = "_hollowbench_noisy"  # set on an Axes that drew a hollow marker
HOLLOW = {"s": 30, "marker": "o", "facecolors": "white", "linewidths": 1.2, "zorder": 5}
# Fixed margins in inches around each panel: tight_layout would cost one more full draw.
MARGINS = {"left": 0.75, "right": 0.15, "bottom": 0.5, "top": 0.35, "wspace": 0.75, "hspace": 0.8}
PANEL = (4.0, 3.1)  # inches


@dataclass(frozen=True)
class Figure:
    """A registered figure, in ``section`` of the report: ``draw(frame)`` makes it;
    ``caption`` says how to read it."""

    key: str
    title: str
    caption: str
    draw: Callable[[pd.DataFrame], MplFigure]
    section: str = "Figures"


FIGURES: list[Figure] = []  # in the report's order


def figure(key: str, title: str, caption: str, section: str = "Figures") -> Callable:
    """Registers the decorated drawer in :data:`FIGURES`."""

    def register(draw: Callable[[pd.DataFrame], MplFigure]) -> Callable:
        FIGURES.append(Figure(key, title, caption, draw, section))
        return draw

    return register


def setup_style() -> None:
    """One look for every figure; SVG text stays text (smaller files, faster to write), and a
    fixed hash salt makes the SVG's clip-path ids, so its bytes, the same on every rebuild."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.9)
    style = {"svg.fonttype": "none", "svg.hashsalt": "hollowbench", "legend.fontsize": 6}
    plt.rcParams.update({**style, "figure.dpi": 100})


def _measured(rows: pd.DataFrame, y: str) -> pd.DataFrame:
    """Rows that ran with a positive ``y`` (the axes are logarithmic), d and k as floats."""
    ok = rows[rows["status"].eq("ok") & rows[y].gt(0)]
    return ok.astype({c: float for c in ("d", "k", "n_probes", "matvecs") if c in ok})


def _palette(values: Iterable) -> dict[str, tuple]:
    """A fixed colour per name, so a method keeps its colour in every panel."""
    names = sorted(set(map(str, values)))
    n = max(len(names), 1)
    colors = sns.color_palette("tab10" if n <= 10 else "tab20" if n <= 20 else "husl", n)
    return dict(zip(names, colors, strict=False))


def _panels(
    rows: pd.DataFrame,
    draw: Callable[[Axes, pd.DataFrame], bool],
    labels: tuple[str, str],
    *,
    by: str = "facet",
    ncols: int = 3,
    own_legends: bool = False,
) -> MplFigure:
    """A PANEL-sized panel per value of ``by``, in rows of ``ncols`` (2 with ``own_legends``);
    ``draw(ax, rows)`` plots one and says if it marked a point that did not run. One legend on
    the right for the figure, unless each panel keeps its own beside it."""
    keys = sorted(rows[by].unique())
    legend_in = 3.3 if own_legends else 2.6
    ncols = max(1, min(len(keys), 2 if own_legends else ncols))
    nrows = math.ceil(len(keys) / ncols)
    m, (w, h) = MARGINS, PANEL
    wspace = m["wspace"] + (legend_in if own_legends else 0.0)
    width = ncols * w + (ncols - 1) * wspace + m["left"] + m["right"] + legend_in
    height = nrows * h + (nrows - 1) * m["hspace"] + m["bottom"] + m["top"]
    fig, grid = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=m["left"] / width,
        right=1 - (m["right"] + legend_in) / width,
        bottom=m["bottom"] / height,
        top=1 - m["top"] / height,
        wspace=wspace / w,
        hspace=m["hspace"] / h,
    )
    for ax in grid.flat[len(keys) :]:
        ax.remove()
    axes = list(grid.flat[: len(keys)])
    marked = False
    for ax, key in zip(axes, keys, strict=True):
        marked |= draw(ax, rows[rows[by].eq(key)])
        ax.set(title=_wrapped(key), xlabel=labels[0], ylabel=labels[1])
        ax.title.set_fontsize(8)
        if not own_legends and ax.get_legend() is not None:
            ax.get_legend().remove()
    if not own_legends:  # every panel's entries once each
        entries: dict[str, object] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                entries.setdefault(label, handle)
        entries |= _mark_entries(axes, marked)
        fig.legend(entries.values(), entries.keys(), loc="center right", fontsize=7, frameon=False)
    return fig


def _wrapped(title: str, width: int = 58) -> str:
    """A facet title broken between its " · " parts, so that neighbouring titles never meet."""
    lines: list[str] = []
    for part in str(title).split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _mark_entries(axes: list[Axes], marked: bool) -> dict[str, Line2D]:
    """The legend entries of the 'did not run' marks (where ``marked``) and of the hollow noisy
    markers (where an axes drew one)."""
    entries = {}
    if marked:
        entries["did not run"] = Line2D([], [], marker="x", ls="", mew=2, color="0.3")
    if any(getattr(ax, NOISY_ATTR, False) for ax in axes):
        entries[NOISY_LABEL] = Line2D([], [], marker="o", ls="", mfc="white", mec="0.3")
    return entries


def _mark_noisy(ax: Axes, rows: pd.DataFrame, x: str, y: str, hue: str, palette: dict) -> None:
    """A hollow marker over each noisy point (measured rows only), in its line's colour."""
    noisy = rows[rows["noisy"]]
    for name, points in noisy.groupby(hue):
        xy = points[x].astype(float), points[y].astype(float)
        ax.scatter(*xy, edgecolors=[palette[str(name)]], **HOLLOW)
    if not noisy.empty:
        setattr(ax, NOISY_ATTR, True)


def _mark_not_run(ax: Axes, rows: pd.DataFrame, x: str, hue: str, palette: dict) -> bool:
    """An 'x' at the bottom edge, with the status, for each row that did not run, in its line's
    colour; says whether there was one."""
    missed = rows[rows["status"].ne("ok") & rows[x].notna()]
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for name, lines in missed.groupby(hue):
        color = palette[str(name)]
        for xv, status in sorted(set(zip(lines[x].astype(float), lines["status"], strict=True))):
            # Lines that all missed the same x stack their marks instead of overprinting them.
            level = sum(1 for text in ax.texts if getattr(text, "xy", (None,))[0] == xv)
            y = 0.03 + 0.07 * level
            ax.plot([xv], [y], marker="x", ms=7, mew=2, color=color, transform=edge, clip_on=False)
            style = {"xycoords": edge, "textcoords": "offset points", "fontsize": 6, "color": color}
            ax.annotate(status, (xv, y), xytext=(4, 3), **style)
    return not missed.empty


def _plot(plot: Callable[..., Axes], data: pd.DataFrame, **kwargs) -> None:
    """A seaborn plot of ``data``, unless a panel holds only points that did not run."""
    if not data.empty:
        plot(data=data, **kwargs)


def _line_figure(
    rows: pd.DataFrame,
    y: str,
    labels: tuple[str, str],
    *,
    x: str = "d",
    hue: str = "series",
    by: str = "facet",
    ncols: int = 3,
    base_x: float | None = 2,
    fit: bool = False,
    timed: bool = True,
    level: float | None = None,
    **style,
) -> MplFigure:
    """The median ``y`` against ``x`` on log axes (x linear where ``base_x`` is None): a panel
    per ``by``, a line per ``hue`` (``style``: more lineplot options), a mark per point that
    did not run, a dotted line at y = ``level``. ``fit``: each panel's own legend gives the
    fitted exponents; ``timed``: noisy points are drawn hollow (y comes from the timed calls)."""
    palette, style = _palette(rows[hue]), {"estimator": "median", "errorbar": None, **style}

    def draw(ax: Axes, sub: pd.DataFrame) -> bool:
        ok = _measured(sub, y)
        _plot(sns.lineplot, data=ok, x=x, y=y, hue=hue, ax=ax, palette=palette, **style)
        if timed:
            _mark_noisy(ax, ok, x, y, hue, palette)
        if level is not None:
            ax.axhline(level, color="0.3", lw=0.8, ls=":")
        marked = _mark_not_run(ax, sub, x, hue, palette)
        _log_axes(ax, base_x)
        if fit:
            _fit_legend(ax, sub, y, marked)
        return marked

    return _panels(rows, draw, labels, by=by, ncols=ncols, own_legends=fit)


def _lines_by_facet(rows: pd.DataFrame, y: str, ylabel: str, **options) -> MplFigure:
    """:func:`_line_figure` of ``y`` against d, a line per series with a positive ``y``."""
    positive = rows[y].gt(0).groupby([rows["facet"], rows["series"]]).transform("any")
    if not positive.any():
        raise NoData(f"no point in the inputs records a positive {y}")
    return _line_figure(rows[positive], y, ("d", ylabel), marker="o", **options)


def _fit_legend(ax: Axes, rows: pd.DataFrame, y: str, marked: bool) -> None:
    """The panel's legend with 'series: d^b [low, high]' for each fitted line."""
    fits = loglog_fits(rows, ["series"], y=y)
    names = {series: f"{series}: {fit.label()}" for (series,), fit in fits.items()}
    handles, labels = ax.get_legend_handles_labels()
    marks = _mark_entries([ax], marked)
    labels = [*(names.get(label, label) for label in labels), *marks]
    where = {
        "loc": "upper left",
        "bbox_to_anchor": (1.02, 1.0),
        "borderaxespad": 0,
        "frameon": False,
    }
    ax.legend([*handles, *marks.values()], labels, fontsize=6, **where)


def _log_axes(ax: Axes, base_x: float | None = 10) -> None:
    """Log axes without minor ticks (they cost much of the drawing time); a y range under two
    decades gets :func:`_ticks_125`."""
    with warnings.catch_warnings():  # a panel of not-run marks alone has no y data to scale
        warnings.filterwarnings("ignore", "Data has no positive values")
        if base_x is not None:
            ax.set_xscale("log", base=base_x)
        ax.set_yscale("log")
    ax.minorticks_off()
    low, high = ax.get_ylim()
    if 0 < low < high < 100 * low:
        _ticks_125(ax.yaxis)


def _ticks_125(axis) -> None:
    """Labelled ticks at 1, 2 and 5 times powers of ten."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


# The headline figure's lines: the exact methods and one Hutchinson probe, on any model.
IN_FORWARDS = (*HOLLOW_METHODS, *DENSE_METHODS, "hutchinson")


@figure(
    "train_step_in_forwards",
    "Train-step cost in forward passes",
    "The cost of one training step (loss on f and the divergence, then the backward pass into "
    "every parameter) as a multiple of one forward pass of the same model, against d on log-log "
    "axes: a line per method (Hutchinson with one probe; in brackets, a model other than the "
    "HollowNet), a panel per backend and device, the fastest variant at each d. The results "
    "hold no timing of a forward pass alone, so one forward is its analytic FLOPs (F times the "
    "batch) at the FLOP-matched MLP Hutchinson-1 step's measured FLOP/s on the same device, "
    "variant, step definition, batch and d ('in forward passes' in the Efficiency table); that "
    "step itself therefore reads its analytic count, 6 (7 for a 'separate_forward' step). Where "
    "a device has fair 'value_and' train steps, the older 'separate_forward' ones are left out.",
    section="At a glance",
)
def train_step_in_forwards(frame: pd.DataFrame) -> MplFigure:
    eff = efficiency_table(frame)
    train = eff[eff["mode"].eq("train") & eff["method"].isin(IN_FORWARDS)]
    train = train[train["n_probes"].fillna(1).eq(1) & train["in forward passes"].gt(0)]
    if train.empty:
        raise NoData("no train step with a FLOP-matched MLP Hutchinson-1 step beside it")
    train = prefer_fair_step(train, ["backend", "device"])
    panel = text(train["backend"]) + " · " + text(train["device"])
    best = train.assign(panel=panel).groupby(["panel", "series", "d"], as_index=False)
    rows = best["in forward passes"].min().assign(status="ok", noisy=False)
    labels = ("d", "train step / one forward pass (x)")
    opts = {"by": "panel", "style": "series", "markers": True, "dashes": False, "timed": False}
    return _line_figure(rows, "in forward passes", labels, **opts)


@figure(
    "time_vs_d",
    "Divergence time against d",
    "Median time per call on log-log axes, a line per method (and model), a panel per backend, "
    "device and mode. The legend gives each line's fitted exponent b of time ~ d^b with its 95% "
    "CI (OLS on the log-log points; noisy points are left out, and the legend says how many). "
    f"{FIT_RULE} {NOT_RUN_NOTE}. {NOISY_NOTE}.",
)
def time_vs_d(frame: pd.DataFrame) -> MplFigure:
    div = workload_rows(frame, "divergence")
    return _lines_by_facet(div, "time_ms", "median time (ms)", fit=True)


@figure(
    "speedup_vs_d",
    "Speedup of hollow over each baseline",
    "Baseline time over hollow time at the same d, backend, device and mode (solid: hollow, the "
    "paper's k reverse passes; dashed: hollow_forward, one forward-mode pass). Above the dotted "
    f"line at 1, the exact hollow operator is faster. {NOT_RUN_NOTE}. {NOISY_NOTE} (here: either "
    "side of the ratio was noisy).",
)
def speedup_vs_d(frame: pd.DataFrame) -> MplFigure:
    speed = _speedups(workload_rows(frame, "divergence"))
    labels = ("d", "speedup of exact hollow (x)")
    opts = {"hue": "baseline", "level": 1.0, "style": "exact", "markers": True}
    return _line_figure(speed, "speedup", labels, **opts)


def _speedups(div: pd.DataFrame) -> pd.DataFrame:
    """One row per facet, d, hollow method and baseline series: the speedup (baseline time over
    hollow time) with status 'ok', or the status of the side that did not run ('missing' for a
    side the inputs lack), and ``noisy``: either side was."""
    exact = div[div["method"].isin(HOLLOW_METHODS) & div["model"].eq("hollownet")]
    if exact.empty:
        raise NoData("no hollow divergence points on a HollowNet in the inputs")
    keys = ["facet", "d", "series"]
    base = div[~div["method"].isin(HOLLOW_METHODS)]
    refs = _with_noisy(cells(exact, keys).rename("ref"), exact, keys)
    refs = refs.rename(columns={"series": "exact", "noisy": "ref noisy"})
    bases = _with_noisy(cells(base, keys).rename("base"), base, keys)
    both = refs.merge(bases.rename(columns={"series": "baseline"}), on=["facet", "d"])
    if both.empty:
        raise NoData("no baseline (dense or hutchinson) divergence points beside hollow")
    values = [_split(ratio(b, r)) for r, b in zip(both["ref"], both["base"], strict=True)]
    both["noisy"] = both["ref noisy"] | both["noisy"]
    return both.assign(d=both["d"].astype(float), **pd.DataFrame(values, index=both.index))


def _split(value: float | str) -> dict[str, float | str]:
    """A speedup cell as (speedup, status): a status string means a side did not run."""
    if isinstance(value, str):
        return {"speedup": float("nan"), "status": value}
    return {"speedup": value, "status": "ok" if math.isfinite(value) else "missing"}


def _with_noisy(values: pd.Series, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``values`` (cells per ``keys``) as a frame, with ``noisy``: whether a measured point of
    the cell was noisy."""
    noisy = (rows["noisy"] & rows["status"].eq("ok")).groupby([rows[k] for k in keys]).any()
    frame = values.to_frame().join(noisy.rename("noisy"))
    frame["noisy"] = frame["noisy"].fillna(False).astype(bool)
    return frame.reset_index()


@figure(
    "peak_memory_vs_d",
    "Peak memory against d",
    "Peak device memory during the timed calls (on the CPU, what the harness records: XLA's "
    "memory analysis for JAX, the process's peak RSS growth for PyTorch), divergence and k=1 "
    "points. A reading of 0 (no growth) cannot sit on the log axis and is left out (see "
    f"tables/points.csv). {NOT_RUN_NOTE}.",
)
def peak_memory_vs_d(frame: pd.DataFrame) -> MplFigure:
    rows = frame[frame["workload"].isin(["divergence", "ddim"]) & frame["k"].fillna(1).eq(1)]
    mib = rows.assign(peak_mem_bytes=rows["peak_mem_bytes"] * 2.0**-20)
    return _lines_by_facet(mib, "peak_mem_bytes", "peak memory (MiB)", timed=False)


@figure(
    "ddim_cost_vs_k",
    "D_dim^k cost against k",
    "Median time of D_dim^k against the order k: colour per method, marker per d. The hollow "
    f"methods should grow about linearly in k at every d. {NOT_RUN_NOTE}. {NOISY_NOTE}.",
)
def ddim_cost_vs_k(frame: pd.DataFrame) -> MplFigure:
    ddim = workload_rows(frame, "ddim")
    ddim = ddim.assign(dim=ddim["d"].astype(float).map("d={:.0f}".format))
    labels = ("k (order of the derivative)", "median time (ms)")
    opts = {"style": "dim", "markers": True, "dashes": False}
    fig = _line_figure(ddim, "time_ms", labels, x="k", base_x=None, **opts)
    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


@figure(
    "hutchinson_error_vs_cost",
    "Hutchinson error against cost, exact methods beside it",
    "Each Hutchinson line joins probe counts m (labelled) at one d; its error is the relative std "
    "across probe seeds. The exact methods' error is their max abs error against the dense "
    "reference on a small slice; an error of exactly 0 is drawn at the axis floor.",
)
def hutchinson_error_vs_cost(frame: pd.DataFrame) -> MplFigure:
    div = workload_rows(frame, "divergence")
    hutch = _measured(div[div["method"].eq("hutchinson")], "error")
    if hutch.empty:
        raise NoData("no hutchinson point in the inputs records an error")
    exact = div[~div["method"].isin(STOCHASTIC_METHODS)]
    floor = hutch["error"].min() / 10  # an error of exactly 0 cannot sit on a log axis
    exact = exact.assign(error=exact["error"].mask(exact["error"].eq(0), floor))
    rows = pd.concat([hutch, _measured(exact, "error")])
    rows["dim"] = rows["d"].map("d={:.0f}".format)
    labels = ("median time (ms)", "error (see caption)")
    return _error_vs_time(rows, "dim", "n_probes", "m={:.0f}", labels, style="method", s=40)


@figure(
    "estimator_error_vs_time",
    "Stochastic estimators against the exact divergence at equal cost (train mode)",
    "Relative std across probe seeds against the median time of a training step, a line per "
    "stochastic method (and model) joining its budgets, each point labelled with its "
    "Jacobian-vector products (Hutchinson: probes; Hutch++, XTrace, XDiag: n_matvecs); the exact "
    "hollow methods (stars) have zero error and are drawn at the axis floor. Left of a star, an "
    "estimator is cheaper than the exact operator; it is never more accurate. A panel per "
    "backend, device and d.",
)
def estimator_error_vs_time(frame: pd.DataFrame) -> MplFigure:
    div = workload_rows(frame, "divergence")
    train = div[div["mode"].eq("train")]
    est = _measured(train[train["method"].isin(STOCHASTIC_METHODS)], "error")
    if est.empty:
        raise NoData("no train-mode divergence point of a stochastic method records an error")
    # The exact methods' zero error cannot sit on a log axis: they are drawn at a floor.
    exact = train[train["method"].isin(HOLLOW_METHODS)].assign(error=est["error"].min() / 10)
    rows = pd.concat([est, _measured(exact, "error")])
    rows["panel"] = rows["facet"] + " · d=" + rows["d"].map("{:.0f}".format)
    labels = ("median train-step time (ms)", "relative std (exact: 0, drawn at the floor)")
    return _error_vs_time(rows, "method", "matvecs", "{:.0f}", labels, "panel", marker="*", s=90)


def _error_vs_time(rows, hue: str, count: str, label: str, labels, by="facet", **dots):
    """Error against median time on log axes, a panel per ``by``: a line per ``hue`` and model
    through the stochastic methods' points in order of ``count``, each labelled ``label`` with
    it, and the other methods' points (``dots``: their scatterplot options)."""
    palette = _palette(rows[hue])
    line = {"style": "model", "sort": False, "markers": True, "errorbar": None, "estimator": None}

    def draw(ax: Axes, sub: pd.DataFrame) -> bool:
        stochastic = sub["method"].isin(STOCHASTIC_METHODS)
        lines = sub[stochastic].sort_values(count)
        xy = {"x": "time_ms", "y": "error", "hue": hue, "ax": ax, "palette": palette}
        _plot(sns.lineplot, data=lines, **xy, **line)
        for x, y, m in zip(lines["time_ms"], lines["error"], lines[count], strict=True):
            ax.annotate(
                label.format(m), (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points"
            )
        _plot(sns.scatterplot, data=sub[~stochastic], **xy, **dots)
        _log_axes(ax)
        return False

    return _panels(rows, draw, labels, by=by)


def _ode(frame: pd.DataFrame) -> pd.DataFrame:
    """The ODE points with labels: ``where`` (backend and device: all run mode "eval"), the
    ``case`` (problem, d, and stiffness and t1 where they tell cases apart), ``stiff`` and
    ``tolerance``."""
    rows = ode_points(frame)
    rows["where"] = text(rows["backend"]) + " · " + text(rows["device_id"])
    rows["stiff"] = rows["stiffness"].map(lambda s: "" if pd.isna(s) else f", stiffness {s:.0e}")
    several = rows.groupby("problem")["t1"].transform("nunique").gt(1)
    end = rows["t1"].map(", t1={:g}".format).where(several, "")
    rows["case"] = text(rows["problem"]) + " d=" + text(rows["d"]) + rows["stiff"] + end
    rows["tolerance"] = "rtol=" + rows["rtol"].map(tolerance)
    return rows


def _ode_lines(rows: pd.DataFrame) -> dict:
    """The ODE figures' lineplot options: a line per root finder (legend in the tables' order),
    a marker per stepper, the most common one drawn solid."""
    finders = rows.drop_duplicates("root finder").sort_values("finder rank")["root finder"]
    return {
        "hue": "root finder",
        "hue_order": list(finders),
        "style": "stepper",
        "style_order": list(rows["stepper"].value_counts().index),
        "markers": True,
        "errorbar": None,
    }


def _ode_panels(rows: pd.DataFrame) -> dict:
    """A panel per value of ``panel`` (case, then facet): a row per case where the inputs hold
    several backends or devices, so they sit side by side."""
    facets = rows["where"].nunique()
    return {"by": "panel", "ncols": facets if facets > 1 else 3}


@figure(
    "ode_work_precision",
    "Stiff ODEs: work-precision of the root finders",
    "Max relative error of the final state against scipy's reference (Radau or BDF at rtol 1e-10) "
    "over the median time of one whole solve, on log-log axes, over the sweep of tolerances (each "
    "point labelled with its rtol): a colour per root finder, a marker per stepper, a panel per "
    "problem and backend/device. Lower left is better. Points without a (time, error) pair are "
    "listed in the panel's top right corner: 'stopped' (the solve hit max_steps before t1), or "
    "the status of a point that did not run.",
)
def ode_work_precision(frame: pd.DataFrame) -> MplFigure:
    rows = _ode(frame)
    line = ["where", "case", "stepper", "root finder"]
    swept = rows.groupby(line)["rtol"].transform("nunique")
    if swept.gt(1).any():  # only the cases with a tolerance sweep; else every case at its rtol
        rows = rows[rows["case"].isin(rows.loc[swept.gt(1), "case"])]
    rows = rows.assign(panel=rows["case"] + "\n" + rows["where"])
    style, palette = _ode_lines(rows), _palette(rows["root finder"])
    xy = {"x": "time_ms", "y": "error_rel", "palette": palette, "sort": False, "estimator": None}

    def draw(ax: Axes, sub: pd.DataFrame) -> bool:
        ok = sub[sub["ran"].eq("ok") & sub["error_rel"].gt(0) & sub["time_ms"].gt(0)]
        ok = ok.sort_values("rtol", ascending=False)
        _plot(sns.lineplot, data=ok, ax=ax, **xy, **style)
        # each line's loosest and tightest rtol: the ones between follow in order
        lines = ok.groupby(line[2:])
        ends = pd.concat([lines.head(1), lines.tail(1)]).drop_duplicates()
        for x, y, r in ends[["time_ms", "error_rel", "rtol"]].to_numpy():
            ax.annotate(tolerance(r), (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        _log_axes(ax)
        _at_least_a_decade(ax)
        _list_missing(ax, sub)
        return False

    labels = ("solve time (ms, median)", "max relative error at t1")
    return _panels(rows, draw, labels, **_ode_panels(rows))


def _at_least_a_decade(ax: Axes) -> None:
    """Log axes spanning a factor of 10 or more, centred on the data, with :func:`_ticks_125`:
    points of almost equal error would otherwise fill the panel with repeated tick labels."""
    for axis, limits in ((ax.xaxis, ax.set_xlim), (ax.yaxis, ax.set_ylim)):
        low, high = axis.get_view_interval()
        if not 0 < low < high:
            continue
        if high < 10 * low:
            middle = math.sqrt(low * high)
            limits(middle / math.sqrt(10), middle * math.sqrt(10))
        if high < 100 * low:
            _ticks_125(axis)


def _list_missing(ax: Axes, rows: pd.DataFrame) -> None:
    """The panel's points that have no (time, error) pair, in its top right corner, which a
    work-precision line (from fast and coarse to slow and accurate) leaves empty."""
    missed = rows[~rows["ran"].eq("ok")].sort_values(["finder rank", "stepper", "rtol"])
    notes = [
        f"{finder}, {stepper}, {tol}: {ran}"
        for finder, stepper, tol, ran in missed[["root finder", "stepper", "tolerance", "ran"]]
        .drop_duplicates()
        .to_numpy()
    ]
    if notes:
        box = {"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.8", "alpha": 0.85}
        style = {"ha": "right", "va": "top", "fontsize": 6, "color": "0.2"}
        ax.text(0.98, 0.97, "\n".join(notes), transform=ax.transAxes, bbox=box, **style)


@figure(
    "ode_time_vs_d",
    "Stiff ODEs: solve time against d",
    "Median time of one whole solve against the state dimension d, where a problem ran at several "
    "d with one stepper and tolerance (the HollowNet system's d-sweep, the Brusselator's grids): "
    "a colour per root finder, a marker per stepper. Newton's dense Jacobian takes d autodiff "
    "passes (jacfwd in JAX, jacrev in PyTorch) and its LU O(d^3) work; Jacobi-Newton's diagonal "
    "(the hollow operator on the HollowNet system, analytic on the classic problems) a fixed "
    f"number of passes. One tolerance per panel: the one with the most points. {NOT_RUN_NOTE}; "
    f"'stopped': the solve hit max_steps before t1. {NOISY_NOTE}.",
)
def ode_time_vs_d(frame: pd.DataFrame) -> MplFigure:
    rows = _ode(frame)
    line = ["where", "problem", "stiffness", "t1", "stepper", "rtol"]
    timed_d = rows["d"].where(rows["time_ms"].gt(0))  # not-run points are drawn, not counted
    rows = rows[timed_d.groupby([rows[c] for c in line], dropna=False).transform("nunique").gt(1)]
    if rows.empty:
        raise NoData("no 'ode' problem was timed at two or more d with one stepper and rtol")
    rows = rows[rows["rtol"].eq(rows.groupby(["where", "problem"])["rtol"].transform(_busiest))]
    panel = text(rows["problem"]) + rows["stiff"] + ", " + rows["tolerance"] + "\n" + rows["where"]
    # a solve that stopped before t1 is marked like a point that did not run
    rows = rows.assign(panel=panel, status=rows["ran"])
    labels = ("d (state dimension)", "solve time (ms, median)")
    return _line_figure(rows, "time_ms", labels, **_ode_lines(rows), **_ode_panels(rows))


def _busiest(rtols: pd.Series) -> float:
    """The tolerance with the most points; of several, the middle one."""
    counts = rtols.value_counts()
    tied = sorted(counts.index[counts.eq(counts.max())])
    return tied[len(tied) // 2]


@figure(
    "compile_time_vs_d",
    "Compile time against d",
    "Seconds of JAX jit (or torch.compile) compilation, measured once and apart from the "
    "steady-state time. Eager points have none and are left out.",
)
def compile_time_vs_d(frame: pd.DataFrame) -> MplFigure:
    div = workload_rows(frame, "divergence")
    return _lines_by_facet(div, "compile_s", "compile time (s)", timed=False)


@figure(
    "energy_vs_d",
    "Energy per call against d",
    "Joules per call from the NVML energy counter, where the GPU reports it, over the kept "
    f"measurement's timed calls. {NOISY_NOTE}.",
)
def energy_vs_d(frame: pd.DataFrame) -> MplFigure:
    return _lines_by_facet(workload_rows(frame, "divergence"), "energy_j", "energy per call (J)")


# The headline methods of the design's comparison: exact hollow, one probe, the dense Jacobian.
HEADLINE = ("hollow", "hutchinson-1", "dense_vectorized")


@figure(
    "device_comparison",
    "Device against device",
    "The headline divergence methods (hollow, hutchinson-1 on the HollowNet, dense_vectorized) on "
    "each device and machine in the inputs: colour per device, marker per method, a panel per "
    f"backend and mode. {NOT_RUN_NOTE}. {NOISY_NOTE}.",
)
def device_comparison(frame: pd.DataFrame) -> MplFigure:
    div = workload_rows(frame, "divergence")
    if div["device_id"].nunique() < 2:
        raise NoData("the inputs hold one device on one machine; nothing to compare")
    div = div[div["series"].isin(HEADLINE)]
    if div.empty:
        raise NoData(f"none of {', '.join(HEADLINE)} in the divergence points")
    panel = text(div["backend"]) + " · " + text(div["mode"])
    div = div.assign(panel=panel, device=div["device_id"], method=div["series"])
    labels = ("d", "median time (ms)")
    opts = {"by": "panel", "ncols": 2, "style": "method", "markers": True}
    return _line_figure(div, "time_ms", labels, hue="device", **opts)
