"""The scaling exponent b of time ~ d^b: an OLS on the log-log points with a 95% CI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Fit:
    """Slope of log time against log d; ``low``/``high`` are NaN with fewer than 3 points."""

    slope: float
    low: float
    high: float
    n: int

    def label(self) -> str:
        """'d^0.52 [0.41, 0.63]', or 'd^0.52 (2 points, no CI)'."""
        if np.isnan(self.low):
            return f"d^{self.slope:.2f} ({self.n} points, no CI)"
        return f"d^{self.slope:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def as_dict(self) -> dict[str, float | int]:
        return {
            "exponent": self.slope,
            "95% CI low": self.low,
            "95% CI high": self.high,
            "points": self.n,
        }


def loglog_fits(
    rows: pd.DataFrame, keys: Sequence[str], x: str = "d", y: str = "time_ms"
) -> dict[tuple, Fit]:
    """A fit per group of ``keys`` over its measured rows (median per x); groups with fewer
    than two x values get none."""
    ok = rows[rows["status"].eq("ok") & rows[y].gt(0) & rows[x].gt(0).fillna(False)]
    medians = ok.groupby([*keys, x], dropna=False)[y].median()
    fits = {}
    for key, points in medians.groupby(level=list(range(len(keys))), dropna=False):
        xs = points.index.get_level_values(-1).to_numpy(dtype=float)
        fit = fit_points(xs, points.to_numpy(dtype=float))
        if fit is not None:
            fits[key if isinstance(key, tuple) else (key,)] = fit
    return fits


def fit_points(xs: np.ndarray, ys: np.ndarray) -> Fit | None:
    """OLS of log y on log x: the slope, and its 95% CI from the t distribution (n-2 dof)."""
    from scipy import stats

    n = len(xs)
    if n < 2:
        return None
    res = stats.linregress(np.log(xs), np.log(ys))
    if n < 3:
        return Fit(float(res.slope), float("nan"), float("nan"), n)
    half = stats.t.ppf(0.975, n - 2) * res.stderr
    return Fit(float(res.slope), float(res.slope - half), float(res.slope + half), n)
