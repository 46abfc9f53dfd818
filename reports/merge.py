"""``python -m reports merge OUT.json SHARD.json...``: one pytest-benchmark file from a sweep's
shards (``--bench-shard I/N``), for pytest-benchmark's own ``compare``. The format has one
``machine_info`` per file, so only one machine's shards merge."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.load import InputError, expand_inputs, read_records
from results_format.schema import VERSION_KEY


def merge(inputs: Sequence[str], out: str | Path) -> dict[str, Any]:
    """Write the merged document to ``out`` and return it. Every input is validated as the
    report builder validates it; a point measured in several shards keeps its last copy."""
    paths = expand_inputs(inputs)
    docs = [_document(path) for path in paths]
    machines = {_machine(doc) for doc in docs}
    if len(machines) > 1:
        raise InputError(
            f"{', '.join(map(str, paths))}: shards of different machines "
            f"({'; '.join(sorted(machines))}) cannot share one machine_info; pass the files to "
            "'python -m reports build' instead"
        )
    merged = dict(docs[0])
    merged["benchmarks"] = list(_unique(b for doc in docs for b in doc["benchmarks"]).values())
    ours = dict(merged.get("hollowbench") or {})
    ours["not_run"] = list(
        _unique(
            p for doc in docs for p in (doc.get("hollowbench") or {}).get("not_run") or []
        ).values()
    )
    ours["merged_from"] = [str(p) for p in paths]
    # The oldest shard's version (its points may lack later keys), and every shard's session:
    # the journals those sessions wrote hold the same points (results_format/SCHEMA.md).
    sections = [doc.get("hollowbench") or {} for doc in docs]
    ours[VERSION_KEY] = min(section.get(VERSION_KEY, 1) for section in sections)
    ours.pop("session", None)
    ours["sessions"] = [
        s
        for section in sections
        for s in section.get("sessions") or [section.get("session")]
        if isinstance(s, str)
    ]
    merged["hollowbench"] = ours
    Path(out).write_text(json.dumps(merged, indent=2))
    return merged


def _document(path: Path) -> dict[str, Any]:
    read_records(path)  # the builder's checks: a readable, complete results file of ours
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError:
        doc = None  # read_records accepted it, so it is a journal
    if path.name.endswith(".jsonl") or not isinstance(doc, dict) or doc.get("kind") == "session":
        raise InputError(
            f"{path}: a journal; merge takes --benchmark-json files (build reads both)"
        )
    return doc


def _machine(doc: dict[str, Any]) -> str:
    """Host, CPU and GPUs: lent machines share host names, so the node alone says too little."""
    machine = doc["machine_info"]
    ours = machine.get("hollowbench") or {}
    gpus = ",".join(str(g.get("uuid") or g.get("name")) for g in ours.get("gpus") or [])
    node = ours.get("node") or machine.get("node") or "unknown"
    return f"{node} ({ours.get('cpu') or 'cpu unknown'}{'; ' + gpus if gpus else ''})"


def _unique(points) -> dict[str, dict[str, Any]]:
    return {point.get("fullname") or point.get("name"): point for point in points}
