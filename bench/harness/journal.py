"""Moved to :mod:`results_format.journal` (packaged, so that ``reports`` reads journals when
installed); kept so that ``from bench.harness.journal import ...`` still works."""

from results_format.journal import Journal, journal_path, parse, read  # noqa: F401
