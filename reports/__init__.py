"""hollowbench's report builder: scaling plots, paper tables and one HTML/Markdown report
from any number of pytest-benchmark JSON files and journals (see ``results_format/SCHEMA.md``).

>>> python -m reports build results.json other-gpu.json --out reports/out
>>> python -m reports compare base.json new.json --fail-above 1.10
"""
