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
from typing import Any

import pandas as pd

from reports.glance import tables_after
from reports.goals import GOALS, Goal
from reports.load import analysis_columns, load_results, warn
from reports.render import Section, html_report, markdown_report
from reports.tables import TABLES, NoData, Table

TITLE = "hollowbench report"
# The report's parts in order (the first opens the report): each table and figure names its own.
SECTIONS = ("At a glance", "Paper claims", "Speed goals", "Workloads", "Figures", "Details")


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
        tables = [(s, _table(s, frame if s.details else slim, out)) for s in (*TABLES, *GOALS)]
        made = {spec.key: section.table for spec, section in tables}
        after = [(s, _table(s, slim, out)) for s in tables_after(made, slim)]
    figures = drawn()
    from reports.figures import FIGURES  # imported by the pool already

    # Each part: the tables read off the others (the claim lines first), figures, tables.
    placed = [*after, *zip(FIGURES, figures, strict=True), *tables]
    parts = {name: [t for spec, t in placed if spec.section == name] for name in SECTIONS}
    intro = _intro(frame, inputs)
    (out / "report.md").write_text(markdown_report(TITLE, intro, parts), encoding="utf-8")
    (out / "index.html").write_text(html_report(TITLE, intro, parts), encoding="utf-8")
    sections = [*(t for _, t in (*tables, *after)), *figures]
    return Built(
        out=out,
        points=len(frame),
        figures=sum(s.png is not None for s in figures),
        tables=sum(s.table is not None for s in sections),
        skipped=[f"{s.title}: {s.note}" for s in sections if s.note is not None],
    )


def _intro(frame: pd.DataFrame, inputs: Sequence[str]) -> list[str]:
    missed = int(frame["status"].ne("ok").sum())
    noisy = int(frame["noisy"].sum())
    devices = ", ".join(sorted(frame["device_id"].astype(str).unique()))
    lines = [
        f"Built {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from {', '.join(inputs)}.",
        f"{len(frame)} measurement points ({missed} did not run) on device(s) {devices} (the "
        "Machines table names each device and its machine).",
    ]
    if noisy:
        lines.append(
            f"{noisy} point{' is' if noisy == 1 else 's are'} noisy: other work on the machine "
            "disturbed the timing. Noisy points are drawn hollow, left out of the fitted "
            "exponents and the goal verdicts, and listed under 'Noisy points'."
        )
    if "sweep.preset" in frame:
        sweeps = frame.dropna(subset="sweep.preset").groupby(
            ["sweep.preset", "sweep.limits"], dropna=False, sort=False
        )["device_id"]
        for (preset, limits), devices in sweeps:
            lines.append(
                f"Sweep on {', '.join(sorted(devices.unique()))}: preset '{preset}'. Points "
                "beyond its limits were never "
                f"requested, so they are absent rather than failed: {limits or 'no limits'}."
            )
    return lines


def _attempt(kind: str, spec: Any, text: list[str], make: Callable[[], Any]) -> tuple[Any, Any]:
    """(what ``make()`` made, None), or (None, the Section that says why there is nothing)."""
    try:
        return make(), None
    except NoData as exc:
        note = str(exc)
    except Exception as exc:  # one table's or figure's bug must not cost the whole report
        warn(f"{kind} '{spec.key}' failed: {type(exc).__name__}: {exc}")
        note = f"could not be {'built' if kind == 'table' else 'drawn'} ({exc})"
    return None, Section(spec.key, spec.title, text, note=note)


def _table(spec: Table | Goal, frame: pd.DataFrame, out: Path) -> Section:
    text = [spec.claim, f"Compared: {spec.compared}"]
    csv = out / "tables" / f"{spec.key}.csv"
    csv.unlink(missing_ok=True)  # an earlier build's table must not outlive its data
    table, failed = _attempt("table", spec, text, lambda: spec.build(frame))
    if failed is not None:
        return failed
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
    fig, failed = _attempt("figure", spec, [spec.caption], lambda: spec.draw(frame))
    if failed is not None:
        plt.close("all")
        return failed
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    fig.savefig(files["svg"], format="svg", metadata={"Date": None})  # rebuilds byte-identical
    plt.close(fig)
    files["png"].write_bytes(png.getvalue())
    return Section(spec.key, spec.title, [spec.caption], png=png.getvalue())
