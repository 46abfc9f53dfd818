"""hollowbench's benchmark sweep: run it with ``pytest bench`` (results: results_format/SCHEMA.md)."""
