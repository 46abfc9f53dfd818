"""The machinery behind ``pytest bench``: every point of every workload goes through
:meth:`~bench.harness.sweep.Sweep.run` (docs/architecture.md)."""
