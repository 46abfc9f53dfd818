"""The scaling exponent b of time ~ d^b: an OLS on the log-log points with a 95% CI, leaving
out (and counting) the noisy points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# An exponent is shown from at least MIN_D distinct d, with a finite 95% CI at most this wide.
MIN_D = 3
MAX_CI_WIDTH = 1.0
RULE = (
    f"An exponent is shown only from {MIN_D} or more d with a finite 95% CI at most "
    f"{MAX_CI_WIDTH:g} wide; otherwise the cell says why ('— (2 d)', or 'n/a: interval [low, "
    "high] too wide')."
)


@dataclass(frozen=True)
class Fit:
    """Slope of log time against log d over ``n`` distinct d; ``low``/``high`` are NaN with
    fewer than 3, and the slope too where leaving out the ``noisy`` points left fewer than 2."""

    slope: float
    low: float
    high: float
    n: int
    noisy: int = 0

    def exponent(self) -> float | str:
        """The slope where :data:`RULE` lets it be shown, else why not: '— (2 d)', 'n/a:
        interval [-2.60, 6.80] too wide', 'no fit: 3 noisy points left out'."""
        if np.isnan(self.slope):
            return f"no fit: {self.noisy} noisy point{'s' * (self.noisy != 1)} left out"
        if self.n < MIN_D or not np.isfinite(self.high - self.low):
            return f"— ({self.n} d)"
        if self.high - self.low > MAX_CI_WIDTH:
            return f"n/a: interval [{self.low:.2f}, {self.high:.2f}] too wide"
        return self.slope

    def label(self) -> str:
        """'d^0.52 [0.41, 0.63]', or :meth:`exponent`'s reason; '; 1 noisy left out' after."""
        shown = self.exponent()
        if isinstance(shown, str):
            return shown if np.isnan(self.slope) else shown + self._left_out()
        return f"d^{shown:.2f} [{self.low:.2f}, {self.high:.2f}]{self._left_out()}"

    def _left_out(self) -> str:
        return f"; {self.noisy} noisy left out" if self.noisy else ""

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "exponent": self.exponent(),
            "95% CI low": self.low,
            "95% CI high": self.high,
            "d": self.n,
            "noisy points left out": self.noisy,
        }


def loglog_fits(
    rows: pd.DataFrame, keys: Sequence[str], x: str = "d", y: str = "time_ms"
) -> dict[tuple, Fit]:
    """A fit per group of ``keys``: OLS of log y on log x over its measured rows that are not
    noisy (median per x), the CI from the t distribution with n-2 degrees of freedom. Groups
    with fewer than two such x get none, or, where noisy rows were left out, a Fit with a NaN
    slope that says so."""
    from scipy import stats

    ok = rows[rows["status"].eq("ok") & rows[y].gt(0) & rows[x].gt(0).fillna(False)]
    noisy = ok["noisy"]
    by_key = noisy.groupby([ok[k] for k in keys], dropna=False).sum()
    left_out = {_key(key): int(count) for key, count in by_key.items()}
    medians = ok[~noisy].groupby([*keys, x], dropna=False)[y].median()
    fits = {}
    for key, points in medians.groupby(level=list(range(len(keys))), dropna=False):
        xs, n = points.index.get_level_values(-1).to_numpy(dtype=float), len(points)
        if n >= 2:
            res = stats.linregress(np.log(xs), np.log(points.to_numpy(dtype=float)))
            half = stats.t.ppf(0.975, n - 2) * res.stderr if n >= 3 else float("nan")
            low, high = float(res.slope - half), float(res.slope + half)
            fits[_key(key)] = Fit(float(res.slope), low, high, n, left_out.get(_key(key), 0))
    for key, count in left_out.items():
        if count and key not in fits:
            fits[key] = Fit(float("nan"), float("nan"), float("nan"), 0, count)
    return fits


def _key(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)
