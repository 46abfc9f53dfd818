"""hollowbench's results contract: what ``pytest bench`` writes and ``python -m reports`` reads.

:mod:`results_format.schema` holds the keys and the format's version, :mod:`results_format.journal`
the crash-safe journal's writer and parser, and ``SCHEMA.md`` beside them describes every key.
Standard library only, and packaged with ``impls`` and ``reports``, so that an installed report
builder reads results without the ``bench`` checkout.
"""
