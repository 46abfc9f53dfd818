"""``python -m reports compare BASE NEW``: per-benchmark time ratios between two runs, matched
by pytest's fullname (which names no machine). A benchmark fails when the runs' [q1, q3] do not
overlap *and* NEW / BASE medians exceed ``--fail-above``, or when it ran in BASE and is oom,
timeout or error in NEW; a change with a noisy side is "inconclusive", never a failure. Exit
status: 0 nothing failed, 1 something did, 2 bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.load import InputError, load_results
from reports.render import markdown_table

FAILING_STATUS = ("oom", "timeout", "error")
COLUMNS = (
    *("status", "median_s", "q1_s", "q3_s", "iqr_s", "noisy"),
    *("machine", "commit.id", "source"),
)


def load_side(arg: str) -> pd.DataFrame:
    """One side of the comparison: the points of one machine, one row per fullname."""
    frame = load_results([arg])
    machines = sorted(frame["machine"].astype(str).unique())
    if len(machines) > 1:
        raise InputError(
            f"{arg}: holds results from {len(machines)} machines ({', '.join(machines)}); "
            "compare one machine's results at a time"
        )
    frame = frame.assign(**{c: None for c in COLUMNS if c not in frame})
    return frame.set_index("fullname")[list(COLUMNS)]


def compare(base: pd.DataFrame, new: pd.DataFrame, fail_above: float) -> pd.DataFrame:
    """One row per fullname in either run: medians, IQRs, ratio, verdict and whether it fails."""
    both = base.merge(
        new, how="outer", left_index=True, right_index=True, suffixes=("_base", "_new")
    )
    if not (both.index.isin(base.index) & both.index.isin(new.index)).any():
        raise InputError("BASE and NEW have no benchmark (fullname) in common")
    (low_new, high_new), (low_base, high_base) = _quartiles(both, "new"), _quartiles(both, "base")
    ratio = both["median_s_new"] / both["median_s_base"]
    both = both.assign(ratio=ratio, slower=low_new > high_base, faster=high_new < low_base)
    out = pd.DataFrame(
        {
            "benchmark": both.index,
            "base ms": both["median_s_base"] * 1e3,
            "new ms": both["median_s_new"] * 1e3,
            "new / base": ratio,
            "base IQR ms": both["iqr_s_base"] * 1e3,
            "new IQR ms": both["iqr_s_new"] * 1e3,
        }
    ).reset_index(drop=True)
    verdicts = [_verdict(row, fail_above) for row in both.itertuples()]
    out["verdict"] = [v for v, _ in verdicts]
    out["fails"] = [f for _, f in verdicts]
    return out.sort_values(["fails", "new / base"], ascending=False, na_position="last")


def _quartiles(both: pd.DataFrame, side: str) -> tuple[pd.Series, pd.Series]:
    """[q1, q3] of one side; the median alone where the file lacks quartiles."""
    median = both[f"median_s_{side}"]
    return both[f"q1_s_{side}"].fillna(median), both[f"q3_s_{side}"].fillna(median)


def _verdict(row, fail_above: float) -> tuple[str, bool]:
    """(verdict text, fails) for one benchmark's row of the merged runs."""
    base, new = row.status_base, row.status_new
    if pd.isna(base):
        return "only in NEW", False
    if pd.isna(new):
        return "only in BASE", False
    if base != "ok" or new != "ok":
        if base == "ok":
            return f"now {new}", new in FAILING_STATUS
        return ("now runs", False) if new == "ok" else (f"{base} -> {new}", False)
    noisy = [side for side, flag in (("BASE", row.noisy_base), ("NEW", row.noisy_new)) if flag]
    if noisy:
        return f"inconclusive: noisy in {' and '.join(noisy)}", False
    if row.slower and row.ratio > fail_above:
        return f"SLOWER beyond noise and {fail_above:g}x", True
    if row.slower:
        return "slower beyond noise (within threshold)", False
    if row.faster:
        return "faster beyond noise", False
    return "within noise", False


def run_compare(base_arg: str, new_arg: str, fail_above: float, csv: str | None) -> int:
    """Print the comparison; return the exit status (0 fine, 1 something failed)."""
    if not np.isfinite(fail_above) or fail_above <= 0:
        raise InputError(f"--fail-above must be a positive ratio, got {fail_above}")
    base, new = load_side(base_arg), load_side(new_arg)
    table = compare(base, new, fail_above)
    for label, side, arg in (("BASE", base, base_arg), ("NEW", new, new_arg)):
        commit = side["commit.id"].dropna()
        print(
            f"{label}: {arg} (machine {side['machine'].iloc[0]}"
            f"{f', commit {str(commit.iloc[0])[:10]}' if len(commit) else ''})"
        )
    print()
    print(markdown_table(table.drop(columns="fails")))
    if csv:
        table.to_csv(csv, index=False)
    failed = int(table["fails"].sum())
    inconclusive = int(table["verdict"].str.startswith("inconclusive").sum())
    print()
    if inconclusive:
        print(
            f"{inconclusive} inconclusive: measured noisily (other work disturbed the timing) "
            "in BASE or NEW, so neither failed nor passed; re-run them on a quiet machine"
        )
    print(
        f"{failed} of {len(table)} benchmarks failed (slower than {fail_above:g}x beyond the "
        "IQR noise, or newly out of memory / timed out / errored)"
        if failed
        else f"OK: nothing slowed beyond the IQR noise by more than {fail_above:g}x"
    )
    return 1 if failed else 0
