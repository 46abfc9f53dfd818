"""The numbers the H100 reference run's README quotes are those of its committed tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

ROOT = Path(__file__).parents[1]
RUN = ROOT / "reports/reference/nvidia-h100"
POINTS = RUN / "report/tables/points.csv"
# README column -> (backend, variant, the (method, model) each "a / b" part of a cell shows)
HOLLOW, HUTCHINSON = ("hollow", "hollownet"), ("hutchinson", "mlp_flop_matched")
COLUMNS = (
    ("torch", "eager", (HOLLOW,)),
    ("torch", "cudagraph", (HOLLOW, HUTCHINSON)),
    ("jax", "jit", (HOLLOW, HUTCHINSON)),
)


def _readme_rows() -> list[list[str]]:
    text = (RUN / "README.md").read_text()
    section = text.split("## Speed goals on an H100", 1)[1].split("\n- ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if re.match(r"\| \d+ \|", line)
    ]


def _quoted(value: float) -> str:
    return "(cut off by the run's time limit)" if pd.isna(value) else f"{value:#.3g}"


def test_readme_h100_table_comes_from_the_reference_tables():
    points = pd.read_csv(POINTS, usecols=[
        "workload", "backend", "variant", "mode", "method", "model", "n_probes", "d", "time_ms",
    ])  # fmt: skip
    points = points[
        points["workload"].eq("divergence") & points["mode"].eq("train")
        & points["n_probes"].fillna(1).eq(1)
    ]  # fmt: skip
    rows = _readme_rows()
    assert len(rows) == 5
    for d, *cells in rows:
        for cell, (backend, variant, parts) in zip(cells, COLUMNS, strict=True):
            quoted = []
            for method, model in parts:
                match = points[
                    points["backend"].eq(backend) & points["variant"].eq(variant)
                    & points["method"].eq(method) & points["model"].eq(model)
                    & points["d"].eq(int(d))
                ]  # fmt: skip
                quoted.append(_quoted(match["time_ms"].median()))
            assert cell == " / ".join(quoted), (d, backend, variant)
