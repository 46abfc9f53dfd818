"""The reusable machinery behind ``pytest bench``.

Test modules only declare a :class:`~bench.harness.grid.Grid`; ``bench/conftest.py`` expands it
from the options (:mod:`~bench.harness.options`) and every point goes through
:meth:`~bench.harness.sweep.Sweep.run`, which warms up, times JAX compilation apart, times the
synchronised calls through pytest-benchmark, reads peak memory and energy, checks the error,
turns OOMs and time-outs into recorded statuses, and appends the point to the journal.
"""
