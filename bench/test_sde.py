"""The SDE workload: the Fokker-Planck residual, hollow against dense (bench/workloads/sde.py)."""

from bench.workloads.sde import WORKLOAD


def test_sde(sweep, benchmark, point):
    sweep.run(benchmark, WORKLOAD.case(sweep, point))
