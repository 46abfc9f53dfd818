"""The divergence sum_i df_i/dx_i: every method, on the HollowNet and its matched MLPs
(bench/workloads/operators.py)."""

from bench.workloads.operators import DIVERGENCE as WORKLOAD


def test_divergence(sweep, benchmark, point):
    sweep.run(benchmark, WORKLOAD.case(sweep, point))
