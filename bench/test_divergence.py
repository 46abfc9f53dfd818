"""The divergence sum_i df_i/dx_i: all five methods, on the HollowNet and its matched MLPs.

The grid is declared here; conftest expands it from the ``--bench-*`` options and presets, and
bench/harness times, checks and records every point.
"""

from bench.harness.grid import Grid
from bench.harness.operators import run_operator
from impls import METHODS

GRID = Grid(workload="divergence", methods=METHODS, ks=(1,))


def test_divergence(sweep, benchmark, point):
    run_operator(sweep, benchmark, point)
