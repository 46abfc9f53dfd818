"""results_format/SCHEMA.md against results_format/schema.py: the document names every key the
code writes, and the format's version."""

from __future__ import annotations

import re
from pathlib import Path

from results_format import schema

DOC = (Path(__file__).parents[1] / "results_format" / "SCHEMA.md").read_text()
DOCUMENTED = set(re.findall(r"`([a-z_0-9]+)`", DOC)) | set(re.findall(r'"([a-z_0-9]+)"', DOC))


def test_schema_md_names_every_key():
    keys = {*schema.INFO_KEYS, *schema.STATS, *schema.COUNTS, *schema.STATUSES}
    keys |= {key for keys in schema.WORKLOAD_KEYS.values() for key in keys}
    keys |= set(schema.WORKLOAD_KEYS)
    keys |= {schema.VERSION_KEY}
    assert not sorted(keys - DOCUMENTED), "keys the code writes but SCHEMA.md does not name"


def test_schema_md_names_the_workloads_the_code_runs():
    workloads = re.search(r"`workload`: (.*)", DOC).group(1)
    assert set(re.findall(r'"([a-z]+)"', workloads)) == set(schema.WORKLOAD_KEYS)


def test_schema_md_states_the_current_version():
    assert f"`{schema.VERSION_KEY}`: {schema.SCHEMA_VERSION}" in DOC
