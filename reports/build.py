"""``python -m reports build``: load the results, draw every figure, make every table, write
``index.html``, ``report.md``, ``figures/*.png|svg`` and ``tables/*.csv`` into one folder."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from reports.goals import GOALS
from reports.load import analysis_columns, load_results, warn
from reports.render import Section, html_report, markdown_report
from reports.tables import TABLES, NoData, Table

TITLE = "hollowbench report"
PAPER = ("c1_ddim_k_passes", "c2_dense_diagonal", "c3_exact_vs_stochastic")
WORKLOADS = ("ode_jacobi_newton", "cnf_exact_vs_stochastic", "sde_fp_residual")
GOAL_KEYS = tuple(g.key for g in GOALS)


@dataclass(frozen=True)
class Built:
    """What a build wrote: the folder, and how many figures and tables hold data."""

    out: Path
    points: int
    figures: int
    tables: int
    skipped: list[str]


def build(inputs: Sequence[str], out: str | Path) -> Built:
    """Write the report of the result files ``inputs`` (paths or globs) into ``out``."""
    frame = load_results(inputs)
    out = Path(out)
    for sub in ("figures", "tables"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "tables" / "points.csv", index=False)
    slim = analysis_columns(frame)
    with _figure_pool(slim, out) as drawn:  # figures are drawn while the tables are made
        tables = {
            spec.key: _table(spec, frame if spec.details else slim, out)
            for spec in (*TABLES, *GOALS)
        }
    figures = drawn()
    parts = [
        ("Paper claims", [tables[k] for k in PAPER]),
        ("Speed goals", [tables[g.key] for g in GOALS]),
        ("Workloads", [tables[k] for k in WORKLOADS]),
        ("Figures", figures),
        ("Details", [t for k, t in tables.items() if k not in {*PAPER, *WORKLOADS, *GOAL_KEYS}]),
    ]
    intro = _intro(frame, inputs)
    (out / "report.md").write_text(markdown_report(TITLE, intro, parts), encoding="utf-8")
    (out / "index.html").write_text(html_report(TITLE, intro, parts), encoding="utf-8")
    sections = [*tables.values(), *figures]
    return Built(
        out=out,
        points=len(frame),
        figures=sum(s.png is not None for s in figures),
        tables=sum(s.table is not None for s in tables.values()),
        skipped=[f"{s.title}: {s.note}" for s in sections if s.note is not None],
    )


def _intro(frame: pd.DataFrame, inputs: Sequence[str]) -> list[str]:
    missed = int(frame["status"].ne("ok").sum())
    noisy = int(frame["noisy"].sum())
    machines = ", ".join(sorted(frame["machine"].astype(str).unique()))
    devices = ", ".join(sorted(frame["device_id"].astype(str).unique()))
    lines = [
        f"Built {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from {', '.join(inputs)}.",
        f"{len(frame)} measurement points ({missed} did not run) from machine(s) {machines}; "
        f"devices: {devices}.",
    ]
    if noisy:
        lines.append(
            f"{noisy} point{' is' if noisy == 1 else 's are'} noisy: other work on the machine "
            "disturbed the timing. Noisy points are drawn hollow, left out of the fitted "
            "exponents and the goal verdicts, and listed under 'Noisy points'."
        )
    if "sweep.preset" in frame:
        sweeps = frame[["machine", "sweep.preset", "sweep.limits"]].dropna(subset="sweep.preset")
        for machine, preset, limits in sweeps.drop_duplicates().itertuples(index=False):
            lines.append(
                f"Sweep on {machine}: preset '{preset}'. Points beyond its limits were never "
                f"requested, so they are absent rather than failed: {limits or 'no limits'}."
            )
    return lines


def _table(spec: Table, frame: pd.DataFrame, out: Path) -> Section:
    text = [spec.claim, f"Compared: {spec.compared}"]
    csv = out / "tables" / f"{spec.key}.csv"
    csv.unlink(missing_ok=True)  # an earlier build's table must not outlive its data
    try:
        table = spec.build(frame)
    except NoData as exc:
        return Section(spec.key, spec.title, text, note=str(exc))
    except Exception as exc:  # one table's bug must not cost the whole report
        warn(f"table '{spec.key}' failed: {type(exc).__name__}: {exc}")
        return Section(spec.key, spec.title, text, note=f"could not be built ({exc})")
    table.to_csv(csv, index=False)
    return Section(spec.key, spec.title, text, table=table)


@contextlib.contextmanager
def _figure_pool(frame: pd.DataFrame, out: Path) -> Iterator[Callable[[], list[Section]]]:
    """Yields the getter of every figure's section, drawn by forked workers while the caller
    goes on (matplotlib takes most of a build's time), or here on one core, off Linux, or
    where JAX or torch is loaded."""
    # Imported here so that `compare` never pays for matplotlib and seaborn, and before the
    # fork so that the workers inherit them.
    from reports.figures import FIGURES, setup_style

    setup_style()
    jobs = [(spec.key, frame, out) for spec in FIGURES]
    workers = min(os.cpu_count() or 1, len(jobs))
    # fork only on Linux: macOS system libraries are not fork-safe, Windows cannot fork; and
    # not from a process whose JAX or torch thread pools run (a child may inherit a held lock).
    threaded = any(name in sys.modules for name in ("jax", "torch"))
    if workers < 2 or threaded or not sys.platform.startswith("linux"):
        sections = [_figure(*job) for job in jobs]
        yield lambda: sections
        return
    # Forked workers share the frame with this process instead of unpickling a copy.
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        result = pool.starmap_async(_figure, jobs, chunksize=1)
        yield result.get
        result.wait()


def _figure(key: str, frame: pd.DataFrame, out: Path) -> Section:
    """Draw one figure, write its PNG and SVG, and return its section of the report."""
    import matplotlib.pyplot as plt

    from reports.figures import FIGURES

    spec = next(f for f in FIGURES if f.key == key)
    files = {ext: out / "figures" / f"{spec.key}.{ext}" for ext in ("png", "svg")}
    for path in files.values():
        path.unlink(missing_ok=True)  # an earlier build's figure must not outlive its data
    try:
        fig = spec.draw(frame)
    except NoData as exc:
        return Section(spec.key, spec.title, [spec.caption], note=str(exc))
    except Exception as exc:  # one figure's bug must not cost the whole report
        plt.close("all")
        warn(f"figure '{spec.key}' failed: {type(exc).__name__}: {exc}")
        return Section(spec.key, spec.title, [spec.caption], note=f"could not be drawn ({exc})")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    fig.savefig(files["svg"], format="svg", metadata={"Date": None})  # rebuilds byte-identical
    plt.close(fig)
    files["png"].write_bytes(png.getvalue())
    return Section(spec.key, spec.title, [spec.caption], png=png.getvalue())
