"""The workloads, each a pure describer of its points (bench/workloads/base.py):
``operators`` (divergence, ddim), ``cnf``, ``ode``, ``sde``; ``bench/test_<name>.py`` hands
pytest each one's ``WORKLOAD``."""

from __future__ import annotations

import importlib

# name -> (module, attribute) of each workload, in the order they run without a budget.
WORKLOADS = {
    "divergence": ("operators", "DIVERGENCE"),
    "ddim": ("operators", "DDIM"),
    "ode": ("ode", "WORKLOAD"),
    "sde": ("sde", "WORKLOAD"),
    "cnf": ("cnf", "WORKLOAD"),
}


def workload(name: str):
    """The workload ``name`` (its module imported on first use)."""
    module, attribute = WORKLOADS[name]
    return getattr(importlib.import_module(f"bench.workloads.{module}"), attribute)
