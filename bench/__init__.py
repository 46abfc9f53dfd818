"""hollowbench's benchmark sweep: run it with ``pytest bench`` (see bench/SCHEMA.md for results)."""
