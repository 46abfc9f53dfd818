"""bench/SCHEMA.md against bench/schema.py: the document names every key the code writes."""

from __future__ import annotations

import re
from pathlib import Path

from bench import schema

DOC = (Path(__file__).parents[1] / "bench" / "SCHEMA.md").read_text()
DOCUMENTED = set(re.findall(r"`([a-z_0-9]+)`", DOC)) | set(re.findall(r'"([a-z_0-9]+)"', DOC))


def test_schema_md_names_every_key():
    keys = {*schema.INFO_KEYS, *schema.STATS, *schema.COUNTS, *schema.STATUSES}
    keys |= {key for keys in schema.WORKLOAD_KEYS.values() for key in keys}
    keys |= set(schema.WORKLOAD_KEYS)
    assert not sorted(keys - DOCUMENTED), "keys the code writes but bench/SCHEMA.md does not name"


def test_schema_md_names_the_workloads_the_code_runs():
    workloads = re.search(r"`workload`: (.*)", DOC).group(1)
    assert set(re.findall(r'"([a-z]+)"', workloads)) == set(schema.WORKLOAD_KEYS)
