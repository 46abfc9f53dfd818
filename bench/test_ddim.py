"""D_dim^k f = [d^k f_i / dx_i^k]_i, k from ``--bench-k`` / the preset: the exact methods, and
XDiag (k = 1) at each matrix-vector budget (Hutchinson's variance: test_divergence.py)."""

from bench.harness.operators import OperatorWorkload
from impls import EXACT_METHODS

WORKLOAD = OperatorWorkload("ddim", (*EXACT_METHODS, "xdiag"))


def test_ddim(sweep, benchmark, point):
    WORKLOAD.run(sweep, benchmark, point)
