"""The CNF workload: FFJORD-style flows (bench/workloads/cnf.py)."""

from bench.workloads.cnf import WORKLOAD


def test_cnf(sweep, benchmark, point):
    sweep.run(benchmark, WORKLOAD.case(sweep, point))
