"""Kernel times of a JAX computation from a jax.profiler trace (``python -m bench.profile``)."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def kernel_times(call: Callable[[], Any], calls: int) -> tuple[dict[str, float], float]:
    """From a jax.profiler trace: the events on the GPU's streams. XLA's CPU runtime traces no
    per-kernel times (only markers and thread-pool waits): on the CPU this is empty."""
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                call()
        trace = next(Path(tmp).rglob("perfetto_trace.json.gz"))
        with gzip.open(trace, "rt") as fh:
            doc = json.load(fh)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    device, threads = set(), {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            if e["args"]["name"].startswith("/device:"):
                device.add(e["pid"])
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
    streams = {k for k, name in threads.items() if k[0] in device and "stream" in name.lower()}
    times: dict[str, float] = {}
    for e in events:
        key = (e.get("pid"), e.get("tid"))
        if e.get("ph") == "X" and (key in streams or (not streams and key[0] in device)):
            times[e["name"]] = times.get(e["name"], 0.0) + float(e.get("dur", 0.0))
    return times, float(sum(times.values()))
