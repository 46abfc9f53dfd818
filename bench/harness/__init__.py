"""The reusable machinery behind ``pytest bench``.

Test modules only declare a :class:`~bench.harness.workload.Workload`; ``bench/conftest.py``
asks it for its points under the options (:mod:`~bench.harness.options`) and every point goes
through
:meth:`~bench.harness.sweep.Sweep.run`, which warms up, times JAX compilation apart, times the
synchronised calls through pytest-benchmark, reads peak memory and energy, checks the error,
turns OOMs and time-outs into recorded statuses, and appends the point to the journal.
"""
