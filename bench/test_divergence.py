"""The divergence sum_i df_i/dx_i: every method, on the HollowNet and its matched MLPs.

The workload is declared here; conftest expands its grid from the ``--bench-*`` options and
presets, and bench/harness times, checks and records every point.
"""

from bench.harness.operators import OperatorWorkload
from impls import METHODS

WORKLOAD = OperatorWorkload("divergence", METHODS, ks=(1,))


def test_divergence(sweep, benchmark, point):
    WORKLOAD.run(sweep, benchmark, point)
