"""The divergence sum_i df_i/dx_i: every method, on the HollowNet and its matched MLPs."""

from bench.harness.operators import OperatorWorkload
from impls import METHODS

WORKLOAD = OperatorWorkload("divergence", METHODS, ks=(1,))


def test_divergence(sweep, benchmark, point):
    WORKLOAD.run(sweep, benchmark, point)
