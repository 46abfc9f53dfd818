"""The stiff-ODE workload: whole solves by implicit steppers (bench/workloads/ode.py)."""

from bench.workloads.ode import WORKLOAD


def test_ode(sweep, benchmark, point):
    sweep.run(benchmark, WORKLOAD.case(sweep, point))
