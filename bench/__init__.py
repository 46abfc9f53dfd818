"""hollowbench's benchmark sweep: ``pytest bench``. Its results: results_format/SCHEMA.md."""
