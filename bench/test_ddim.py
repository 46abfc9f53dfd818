"""D_dim^k f = [d^k f_i / dx_i^k]_i: the exact methods and XDiag (bench/workloads/operators.py)."""

from bench.workloads.operators import DDIM as WORKLOAD


def test_ddim(sweep, benchmark, point):
    sweep.run(benchmark, WORKLOAD.case(sweep, point))
