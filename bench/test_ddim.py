"""D_dim^k f = [d^k f_i / dx_i^k]_i for k from ``--bench-k`` / the preset: the exact methods.

Hutchinson's diagonal estimator is left to test_divergence.py, where its variance is measured.
"""

from bench.harness.grid import Grid
from bench.harness.operators import run_operator
from impls import EXACT_METHODS

GRID = Grid(workload="ddim", methods=EXACT_METHODS)


def test_ddim(sweep, benchmark, point):
    run_operator(sweep, benchmark, point)
