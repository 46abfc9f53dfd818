"""D_dim^k f = [d^k f_i / dx_i^k]_i for k from ``--bench-k`` / the preset: the exact methods,
and XDiag (k = 1) against them at each matrix-vector budget.

Hutchinson's diagonal estimator is left to test_divergence.py, where its variance is measured.
"""

from bench.harness.operators import OperatorWorkload
from impls import EXACT_METHODS

WORKLOAD = OperatorWorkload("ddim", (*EXACT_METHODS, "xdiag"))


def test_ddim(sweep, benchmark, point):
    WORKLOAD.run(sweep, benchmark, point)
